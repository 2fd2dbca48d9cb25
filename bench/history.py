"""A registry whose cost does not grow with its history, measured: ``python bench/history.py``.

For each database (SQLite, PostgreSQL), two fresh registries side by side in one run: one holding
40 finished job rows of one tenant, one holding ``--rows`` (default 1,000,000), created over the
last 20 hours (COPY on PostgreSQL, executemany on SQLite), behind the registry's back, as a database
upgraded across 0006 holds them: its rollups empty, its backfill pending. A gateway app runs in this process (FastAPI's
TestClient, a private Redis, no workers) and each request is timed ``--repeat`` times after a
warm-up; the median at ``--rows`` over the median at 40 is its slowdown:

- ``metrics_slowdown_1m``: ``GET /metrics``;
- ``status_slowdown_1m``: ``GET /v1/admin/status`` (``loraq status``);
- ``usage_slowdown_1m``: ``GET /v1/usage`` by the tenant (the last 24 hours: every row is in it);
- ``post_with_quota_slowdown_1m``: ``POST /v1/jobs`` by the tenant, which has both quotas;
- ``stats_slowdown_1m``: ``GET /v1/adapters/{name}/stats``.

First ``upgrade_s``: the registry is taken down to revision 0005 (before the rollups) and
``loraq db upgrade`` to head is timed over its ``--rows`` jobs (DDL and index builds, no counting).
Then the rollup backfill (``registry.backfill``, at the gateway's default pace: 100 jobs a step
and a pause at least as long between steps) counts the ``--rows`` jobs on a thread while requests
(``POST /v1/jobs`` and ``GET /v1/jobs/{id}`` in turn) are timed; the requests above are timed before
it (the rows counted once without traffic first), so the jobs its traffic queues do not weigh on them:

- ``backfill_jobs_per_s``: jobs it counted per second;
- ``backfill_p99_ratio``: the requests' p99 latency during it over their p99 just before it.

Then the retention purge deletes every one of the ``--rows`` jobs (the app's own purge, one pass
run on a thread of the gateway's process as its purger runs it, "40 days later", at the default
pace of 500 rows a transaction and a pause at least as long between them), while requests (``POST /v1/jobs`` and
``GET /v1/jobs/{id}`` in turn, one at a time) are timed:

- ``purge_rows_per_s``: rows the pass deleted (jobs and minute buckets) per second;
- ``purge_p99_ratio``: the requests' p99 latency during the purge over their p99 just before it.

One JSON line per figure; ``--rows 100000`` runs in a few minutes on two cores::

    python bench/history.py [--rows 1000000] [--db sqlite,postgresql] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from e2e import emit  # bench/ is on sys.path when run as a script
from fastapi.testclient import TestClient
from ingest import drop_schema, postgres_schema
from pydantic import SecretStr
from sqlalchemy import Connection, Engine, insert, select, text

from gateway.app import create_app
from gateway.processes import start_redis
from gateway.settings import GatewaySettings
from registry import backfill, coverage, ids
from registry.backfill import Progress
from registry.db import make_engine, session_factory, transaction
from registry.migrate import downgrade, upgrade
from registry.models import AdapterVersion, Job, Tenant, utcnow
from registry.retention import Purged
from registry.settings import DatabaseSettings
from workers.contract.settings import QueueSettings
from workers.demo_model import adapter_dir

ADMIN = "bench-history-admin-key-0123456789"
SMALL = 40
PAGE = 50_000  # job rows generated and written at a time
SPREAD_S = 20 * 3600  # the rows were created over the last 20 hours
JOB = {"adapter": "upper", "prompt": "hello there", "max_tokens": 8}
COLUMNS = (
    "id", "tenant_id", "adapter_id", "version_id", "status", "priority", "request", "text", "finish_reason",
    "prompt_tokens", "completion_tokens", "error_code", "error_message", "attempts", "worker", "queue_wait_s",
    "run_time_s", "worker_seconds", "reserved_tokens", "created_at", "started_at", "finished_at",
)  # fmt: skip


@dataclass
class Registry:
    """A gateway in this process over a registry holding ``rows`` finished jobs of tenant ``busy``."""

    kind: str
    rows: int
    admin: TestClient
    busy: TestClient
    engine: Engine


def job_rows(tenant_id: int, version: AdapterVersion, start: int, count: int, now: datetime) -> list[tuple[Any, ...]]:
    """``count`` finished jobs (one in ten failed), as COLUMNS, ended over the last SPREAD_S seconds."""
    out = []
    request = orjson.dumps(JOB).decode()
    for i in range(start, start + count):
        created = now - timedelta(seconds=SPREAD_S * (i + 1) / (start + count + 1) + 2)
        ok = i % 10 != 0
        out.append(
            (
                str(ids.uuid7(int(created.timestamp() * 1000))), tenant_id, version.adapter_id, version.id,
                "succeeded" if ok else "failed", 0, request, "HELLO THERE" if ok else None, "stop" if ok else None,
                11 if ok else None, 8 if ok else None, None if ok else "engine_error", None if ok else "boom", 1,
                "w1", 0.05, 0.2, 0.1, 0, created, created + timedelta(seconds=0.05),
                created + timedelta(seconds=0.25),
            )
        )  # fmt: skip
    return out


def write_rows(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    if conn.dialect.name == "postgresql":
        raw: Any = conn.connection.dbapi_connection
        with raw.cursor() as cur, cur.copy(f"COPY jobs ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        conn.execute(insert(Job), [dict(zip(COLUMNS, row, strict=True)) for row in rows])


def seed(engine: Engine, rows: int) -> float:
    """Write ``rows`` finished jobs of ``busy`` behind the registry's back, and mark them to be
    counted (as a database upgraded across 0006 has them); returns the seconds it took."""
    started, now = time.perf_counter(), utcnow()
    with engine.begin() as conn:
        tenant_id = conn.scalar(select(Tenant.id).where(Tenant.name == "busy"))
        version = conn.execute(select(AdapterVersion)).first()
        assert tenant_id is not None and version is not None
        for start in range(0, rows, PAGE):
            write_rows(conn, job_rows(tenant_id, version, start, min(PAGE, rows - start), now))  # type: ignore[arg-type]
    with transaction(session_factory(engine)) as session:
        backfill.recount(session)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    return time.perf_counter() - started


@contextmanager
def registry(kind: str, rows: int, home: Path, redis_url: str) -> Iterator[Registry]:
    schema = None
    home.mkdir(parents=True, exist_ok=True)
    if kind == "postgresql":
        url, schema = postgres_schema()
    else:
        url = f"sqlite:///{home / 'registry.db'}"
    upgrade(url)
    settings = GatewaySettings(
        admin_key=SecretStr(ADMIN),
        queue=QueueSettings(redis_url=redis_url),
        db=DatabaseSettings(home=home, database_url=url),
        retention_days=30,
        purge_interval_s=3600,  # the bench runs the pass itself
        rollup_backfill=False,  # and the backfill
    )
    engine = make_engine(url)
    try:
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
            admin.post("/v1/adapters", json={"name": "upper", "uri": str(adapter_dir("upper"))}).raise_for_status()
            quotas = {"max_queued_jobs": 10_000_000, "max_tokens_per_day": 10**12}
            admin.put("/v1/admin/tenants/busy", json=quotas).raise_for_status()
            key = admin.post("/v1/admin/keys", json={"tenant": "busy"}).json()["key"]
            seconds = seed(engine, rows)
            print(f"{kind}: {rows} rows written in {seconds:.1f}s", flush=True)
            busy = TestClient(admin.app, headers={"Authorization": f"Bearer {key}"})
            yield Registry(kind=kind, rows=rows, admin=admin, busy=busy, engine=engine)
    finally:
        engine.dispose()
        if schema is not None:
            drop_schema(schema)


def requests_of(reg: Registry) -> dict[str, Callable[[], Any]]:
    post = {"adapter": "upper", "prompt": "hi", "max_tokens": 4}
    return {
        "metrics": lambda: reg.admin.get("/metrics"),
        "status": lambda: reg.admin.get("/v1/admin/status"),
        "usage": lambda: reg.busy.get("/v1/usage"),
        "post_with_quota": lambda: reg.busy.post("/v1/jobs", json=post),
        "stats": lambda: reg.admin.get("/v1/adapters/upper/stats"),
    }


def medians(reg: Registry, repeat: int) -> dict[str, float]:
    """Seconds per request, median of ``repeat`` after three unmeasured."""
    out = {}
    for name, call in requests_of(reg).items():
        times = []
        for i in range(repeat + 3):
            started = time.perf_counter()
            resp = call()
            elapsed = time.perf_counter() - started
            assert resp.status_code in (200, 202), (name, resp.status_code, resp.text[:200])
            if i >= 3:
                times.append(elapsed)
        out[name] = statistics.median(times)
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def timed_traffic(reg: Registry, until: Callable[[], bool], at_least: int) -> list[float]:
    """Latencies of POST /v1/jobs and GET /v1/jobs/{id} in turn, until ``until()`` (and ``at_least``)."""
    out: list[float] = []
    job_id = ""
    while len(out) < at_least or not until():
        started = time.perf_counter()
        if job_id:
            resp = reg.busy.get(f"/v1/jobs/{job_id}")
            job_id = ""
        else:
            resp = reg.busy.post("/v1/jobs", json={"adapter": "upper", "prompt": "during", "max_tokens": 4})
            job_id = resp.json()["id"]
        out.append(time.perf_counter() - started)
        assert resp.status_code in (200, 202), resp.text[:200]
    return out


def purge_under_traffic(reg: Registry) -> tuple[Purged, float, list[float], list[float]]:
    """(what the pass deleted, its seconds, latencies before it, latencies during it)."""
    before = timed_traffic(reg, until=lambda: True, at_least=1000)
    purge = reg.admin.app.state.purger.purge  # type: ignore[attr-defined]
    done: list[Purged] = []
    worker = threading.Thread(target=lambda: done.append(purge.run(utcnow() + timedelta(days=40))))
    started = time.perf_counter()
    worker.start()
    during = timed_traffic(reg, until=lambda: not worker.is_alive(), at_least=50)
    worker.join()
    elapsed = time.perf_counter() - started
    return done[0], elapsed, before, during


def upgrade_seconds(reg: Registry) -> float:
    """Seconds ``loraq db upgrade`` takes from revision 0005 (before the rollups) to head over the
    registry's jobs: the registry is first taken down to 0005 with the gateway's loops stopped."""
    state = reg.admin.app.state
    loops = (state.batches, state.webhooks, state.purger)
    for loop in loops:
        loop.stop()
    url = reg.engine.url.render_as_string(hide_password=False)
    reg.engine.dispose()
    downgrade(url, "0005")
    started = time.perf_counter()
    upgrade(url)
    seconds = time.perf_counter() - started
    for loop in loops:
        loop.start()
    with transaction(session_factory(reg.engine)) as session:
        assert coverage.read(session).state == coverage.PENDING  # the upgrade counted nothing
    return seconds


def backfill_under_traffic(reg: Registry) -> tuple[Progress, float, list[float], list[float]]:
    """(the backfill's end, its seconds, latencies before it, latencies during it), at the gateway's
    default pace."""
    before = timed_traffic(reg, until=lambda: True, at_least=1000)
    settings = GatewaySettings()
    sessions = session_factory(reg.engine)
    done: list[Progress] = []
    step = lambda: done.append(  # noqa: E731
        backfill.run(sessions, chunk=settings.backfill_chunk_rows, pause_s=settings.backfill_pause_s)
    )
    worker = threading.Thread(target=step)
    started = time.perf_counter()
    worker.start()
    during = timed_traffic(reg, until=lambda: not worker.is_alive(), at_least=50)
    worker.join()
    return done[0], time.perf_counter() - started, before, during


def run(kind: str, rows: int, repeat: int, home: Path, redis_url: str) -> None:
    with registry(kind, SMALL, home / f"{kind}-small", redis_url) as small:
        backfill.run(session_factory(small.engine))
        small_s = medians(small, repeat)
    with registry(kind, rows, home / f"{kind}-large", redis_url) as large:
        upgrade_s = upgrade_seconds(large)
        print(f"{kind}: upgraded from 0005 over {rows} rows in {upgrade_s:.1f}s", flush=True)
        backfill.run(session_factory(large.engine), chunk=10_000)  # first without traffic: the requests are
        large_s = medians(large, repeat)  # timed over the rows alone, not over the traffic's queued jobs
        with transaction(session_factory(large.engine)) as session:
            backfill.recount(session)  # then again, as the gateway runs it, under traffic
        counted, backfill_s, quiet, busy = backfill_under_traffic(large)
        print(f"{kind}: {counted.counted} rows counted by the backfill in {backfill_s:.1f}s", flush=True)
        purged, seconds, before, during = purge_under_traffic(large)
        policy = large.admin.app.state.purger.purge.policy  # type: ignore[attr-defined]
    common = {"db": kind, "rows": rows, "small_rows": SMALL}
    goals = {"usage": 3.0}
    for name in small_s:
        emit(
            f"{name}_slowdown_1m",
            large_s[name] / small_s[name],
            small_ms=round(small_s[name] * 1000, 2),
            large_ms=round(large_s[name] * 1000, 2),
            goal=f"<= {goals.get(name, 1.5)}",
            **common,
        )
    emit("upgrade_s", upgrade_s, note="0005 to head: DDL only, the counting is the backfill's", **common)
    emit(
        "backfill_jobs_per_s",
        counted.counted / backfill_s,
        jobs=counted.counted,
        seconds=round(backfill_s, 1),
        **common,
    )
    emit(
        "backfill_p99_ratio",
        p99(busy) / p99(quiet),
        p99_ms_during=round(p99(busy) * 1000, 2),
        p99_ms_without=round(p99(quiet) * 1000, 2),
        requests_during=len(busy),
        requests_without=len(quiet),
        goal="<= 2",
        **common,
    )
    emit(
        "purge_rows_per_s",
        purged.rows / seconds,
        jobs=purged.jobs,
        minute_buckets=purged.minutes,
        seconds=round(seconds, 1),
        chunk_rows=policy.chunk_rows,
        pause_s=policy.pause_s,
        **common,
    )
    emit(
        "purge_p99_ratio",
        p99(during) / p99(before),
        p99_ms_during=round(p99(during) * 1000, 2),
        p99_ms_without=round(p99(before) * 1000, 2),
        requests_during=len(during),
        requests_without=len(before),
        goal="<= 2",
        **common,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraq-history-") as tmp:
        home = Path(tmp)
        redis_server = start_redis(home / "redis", log=home / "redis.log")
        try:
            for kind in args.db.split(","):
                run(kind, args.rows, args.repeat, home, redis_server.url)
        finally:
            redis_server.stop()


if __name__ == "__main__":
    main()
