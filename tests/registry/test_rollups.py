"""The rollups equal a recount of the jobs table, whatever mix of changes made them, on each database.

``recount`` reads every job row and sums it independently of ``registry.rollups``; ``rollups`` reads
the counter tables. A random mix of submissions, shadows, starts, retries, results, failures,
cancellations, discards and a bulk file (fixed seeds, so a failure replays) must leave them equal.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from contextlib import suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from registry import batches, jobs, rollups, windows
from registry.adapters import ResolvedAdapter, resolve
from registry.db import transaction
from registry.errors import Conflict, NotFound
from registry.models import Job, Tenant
from registry.schemas import FinishReason, GenerationResult, JobCreate, JobError
from tests.registry.test_adapters_and_jobs import World, register
from tests.registry.test_batches import chunk_of, completion, new_batch

Table = dict[tuple[Any, ...], tuple[float, ...]]
ROLLUPS = {
    "job_counts": 4,  # key columns first, then the amounts
    "job_hours": 6,
    "job_minutes": 6,
    "shadow_agreement": 1,
    "tenant_live_jobs": 1,
    "tenant_day_tokens": 2,
}
DAY0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
SQLITE_DATETIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:")


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _key(value: Any) -> Any:
    """One spelling per value on both backends: UTC datetimes, ints for booleans, ISO dates."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime) or (isinstance(value, str) and SQLITE_DATETIME.match(value)):
        return _utc(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def rollup_tables(conn: Connection) -> dict[str, Table]:
    """Every rollup table as key -> amounts, rows whose amounts are all zero left out."""
    out: dict[str, Table] = {}
    for name, width in ROLLUPS.items():
        rows = conn.exec_driver_sql(f"SELECT * FROM {name}").all()
        out[name] = {
            tuple(_key(v) for v in row[:width]): tuple(round(float(v), 6) for v in row[width:])
            for row in rows
            if any(row[width:])
        }
    return out


def _bucket(moment: datetime, width: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return moment - (moment - epoch) % width


def recount(conn: Connection) -> dict[str, Table]:
    """The rollups as a scan of the jobs table gives them (what the readers computed before)."""
    sums: dict[str, defaultdict[tuple[Any, ...], list[float]]] = {
        name: defaultdict(lambda: [0.0] * 8) for name in ROLLUPS
    }
    rows = conn.exec_driver_sql(
        "SELECT id, tenant_id, adapter_id, version_id, status, shadow_of, created_at, finished_at, prompt_tokens,"
        " completion_tokens, worker_seconds, queue_wait_s, run_time_s, reserved_tokens, text FROM jobs"
    ).all()
    by_id = {r[0]: r for r in rows}
    for _id, tenant, adapter, version, status, shadow_of, created, finished, p, c, ws, wait, run, held, text in rows:
        p, c = p or 0, c or 0
        owners = (tenant, adapter, version, status)
        _add(sums["job_counts"][owners], 1, p, c)
        if finished is not None:
            for name, width in (("job_hours", timedelta(hours=1)), ("job_minutes", timedelta(minutes=1))):
                key = (_bucket(_utc(finished), width), *owners, int(shadow_of is not None))
                _add(
                    sums[name][key],
                    1,
                    p,
                    c,
                    ws or 0.0,
                    wait or 0.0,
                    int(wait is not None),
                    run or 0.0,
                    int(run is not None),
                )
        if shadow_of is not None:
            primary = by_id.get(shadow_of)
            if status == "succeeded" and primary is not None and primary[4] == "succeeded":
                _add(sums["shadow_agreement"][(version,)], 1, int(text is not None and text == primary[14]))
            continue
        day = (tenant, _utc(created).date().isoformat())
        if status in ("queued", "running"):
            _add(sums["tenant_live_jobs"][(tenant,)], 1)
            _add(sums["tenant_day_tokens"][day], held)
        else:
            _add(sums["tenant_day_tokens"][day], p + c)
    widths = {"job_counts": 3, "job_hours": 8, "job_minutes": 8, "shadow_agreement": 2}
    return {
        name: {
            tuple(_key(k) for k in key): tuple(round(float(v), 6) for v in amounts[: widths.get(name, 1)])
            for key, amounts in table.items()
            if any(amounts)
        }
        for name, table in sums.items()
    }


def _add(into: list[float], *amounts: float) -> None:
    for i, amount in enumerate(amounts):
        into[i] += amount


# --- the random mix --------------------------------------------------------------------------


class Mix:
    """Random changes of a small registry's jobs, each in its own transaction."""

    def __init__(self, sessions: sessionmaker[Session], world: World, versions: list[ResolvedAdapter], seed: int):
        self.sessions, self.world, self.versions = sessions, world, versions
        self.rng = random.Random(seed)
        self.ids: list[str] = []

    def step(self) -> None:
        action = self.rng.choice(
            [self.submit, self.submit, self.shadow, self.start, self.start, self.record, self.record, self.other]
        )
        action()

    def _pick(self, n: int) -> list[str]:
        return self.rng.sample(self.ids, min(n, len(self.ids))) if self.ids else []

    def submit(self) -> None:
        tenant = self.rng.choice([self.world.acme, self.world.globex])
        key = self.rng.choice([None, None, f"k{self.rng.randrange(4)}"])
        request = JobCreate(
            adapter="upper",
            prompt="p" * self.rng.randrange(1, 9),
            max_tokens=self.rng.randrange(1, 9),
            idempotency_key=key,
        )
        with transaction(self.sessions) as s:
            job = jobs.create_job(
                s, tenant=tenant, request=request, resolved=self.rng.choice(self.versions), job_id=jobs.new_job_id()
            )
            self.ids.append(job.id)

    def shadow(self) -> None:
        with transaction(self.sessions) as s:
            for primary_id in self._pick(1):
                primary = s.get(Job, primary_id)
                if primary is not None and primary.shadow_of is None:
                    copy = jobs.create_shadow(
                        s, primary=primary, resolved=self.rng.choice(self.versions), job_id=jobs.new_job_id()
                    )
                    self.ids.append(copy.id)

    def start(self) -> None:  # a job already running is started again: a retry
        with transaction(self.sessions) as s:
            jobs.start(s, job_ids=self._pick(3), worker=self.rng.choice(["w1", "w2"]))

    def record(self) -> None:
        outcomes = [self._outcome(job_id) for job_id in self._pick(3)]
        with transaction(self.sessions) as s:
            jobs.record(s, outcomes)

    def _outcome(self, job_id: str) -> jobs.Outcome:
        finished = DAY0 + timedelta(seconds=self.rng.randrange(3 * 3600))
        seconds = self.rng.choice([None, self.rng.random()])
        if self.rng.random() < 0.25:
            error = JobError(code="engine_error", message="x")
            return jobs.Outcome(job_id, "w1", 0.5, 0.25, finished, error=error, worker_seconds=seconds)
        text = self.rng.choice(["SAME", "OTHER"])
        result = GenerationResult(
            text=text,
            finish_reason=FinishReason.STOP,
            prompt_tokens=self.rng.randrange(1, 9),
            completion_tokens=len(text),
        )
        return jobs.Outcome(
            job_id, "w1", self.rng.random(), self.rng.random(), finished, result=result, worker_seconds=seconds
        )

    def other(self) -> None:
        for job_id in self._pick(1):
            with transaction(self.sessions) as s:
                kind = self.rng.choice(["cancel", "fail", "discard"])
                if kind == "cancel":
                    self._cancel(s, job_id)
                elif kind == "fail":
                    jobs.fail_one(s, job_id=job_id, worker="w2", code="worker_error", message="x")
                else:
                    jobs.discard_unpublished(s, job_id=job_id)

    def _cancel(self, s: Session, job_id: str) -> None:
        job = s.get(Job, job_id)
        if job is None:
            return
        tenant = s.get(Tenant, job.tenant_id)
        assert tenant is not None
        with suppress(Conflict, NotFound):  # ended already; a shadow copy is not the tenant's to cancel
            jobs.cancel(s, tenant=tenant, job_id=job_id)


def bulk_jobs(sessions: sessionmaker[Session], world: World, tmp_path: Path, lines: int) -> str:
    """A bulk file's jobs, ingested; returns the batch id."""
    raw = [completion(f"c{i}") for i in range(lines)]
    with transaction(sessions) as s:
        batch = new_batch(s, world, tmp_path, raw)
        held = batches.claim(s, batch_id=batch.id, owner="gw", lease_s=30)
        assert held is not None
        batches.commit_chunk(s, batch=held, owner="gw", lease_s=30, chunk=chunk_of(s, world, held, raw))
        return batch.id


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_equal_a_recount_after_a_random_mix_of_changes(
    session_factory: sessionmaker[Session], engine: Engine, world: World, tmp_path: Path, seed: int
) -> None:
    batch_id = bulk_jobs(session_factory, world, tmp_path, lines=6)
    with transaction(session_factory) as s:
        register(s, world, "rot13")
        versions = [resolve(s, tenant=world.acme, name=n, routing_key="k") for n in ("upper", "rot13")]
        bulk = list(s.scalars(select(Job.id).where(Job.batch_id == batch_id)))
    mix = Mix(session_factory, world, versions, seed)
    mix.ids.extend(bulk)
    for i in range(80):
        mix.step()
        if i == 40:
            with transaction(session_factory) as s:
                batches.cancel(s, tenant=world.acme, batch_id=batch_id)
    with engine.connect() as conn:
        assert rollup_tables(conn) == recount(conn)


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 3, 1, hour, minute, second, tzinfo=UTC)


def pieces(spans: windows.Spans) -> tuple[list[windows.Span], ...]:
    return list(spans.hours), list(spans.minutes), list(spans.rows)


def test_a_window_is_cut_into_whole_hours_whole_minutes_and_the_rest() -> None:
    spans = windows.split(at(10, 15, 20), at(12, 40, 10))
    assert spans.hours == [(at(11, 0), at(12, 0))]
    assert spans.minutes == [(at(10, 16), at(11, 0)), (at(12, 0), at(12, 40))]
    assert spans.rows == [(at(10, 15, 20), at(10, 16)), (at(12, 40), at(12, 40, 10))]
    aligned = windows.split(at(10, 0), at(12, 0))
    assert pieces(aligned) == ([(at(10, 0), at(12, 0))], [], [])
    short = windows.split(at(10, 15, 20), at(10, 15, 50))
    assert pieces(short) == ([], [], [(at(10, 15, 20), at(10, 15, 50))])
    since = windows.split(at(10, 15, 20), None)
    assert pieces(since) == ([], [(at(10, 16), None)], [(at(10, 15, 20), at(10, 16))])
    assert windows.split(at(10, 0), at(9, 0)) == windows.Spans()
    assert rollups.floor(at(10, 15, 20), timedelta(hours=1)) == at(10, 0)


def scan(conn: Connection, since: datetime, until: datetime | None) -> dict[tuple[Any, ...], tuple[float, ...]]:
    """What a scan of the job rows gives for a window: (tenant, adapter, version, status, shadow) -> sums."""
    out: defaultdict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0] * 4)
    for tenant, adapter, version, status, shadow_of, finished, p, c, ws in conn.exec_driver_sql(
        "SELECT tenant_id, adapter_id, version_id, status, shadow_of, finished_at, prompt_tokens, completion_tokens,"
        " worker_seconds FROM jobs WHERE finished_at IS NOT NULL"
    ):
        if since <= _utc(finished) and (until is None or _utc(finished) < until):
            _add(out[(tenant, adapter, version, status, int(shadow_of is not None))], 1, p or 0, c or 0, ws or 0.0)
    return {k: tuple(round(v, 6) for v in sums) for k, sums in out.items()}


def summed(conn: Connection, since: datetime, until: datetime | None) -> dict[tuple[Any, ...], tuple[float, ...]]:
    ended = windows.ended(since, until)
    keys = [ended.c.tenant_id, ended.c.adapter_id, ended.c.version_id, ended.c.status, ended.c.shadow]
    sums = [ended.c.jobs, ended.c.prompt_tokens, ended.c.completion_tokens, ended.c.worker_seconds]
    rows = conn.execute(select(*keys, *(func.sum(c) for c in sums)).group_by(*keys)).all()
    return {(*row[:4], int(row[4])): tuple(round(float(v), 6) for v in row[5:]) for row in rows}


def test_a_window_of_the_rollups_sums_what_a_scan_of_its_job_rows_gives(
    session_factory: sessionmaker[Session], engine: Engine, world: World
) -> None:
    with transaction(session_factory) as s:
        register(s, world, "upper")
        versions = [resolve(s, tenant=world.acme, name="upper", routing_key="k")]
    mix = Mix(session_factory, world, versions, seed=7)
    for _ in range(120):
        mix.step()
    rng = random.Random(7)
    with engine.connect() as conn:
        for _ in range(20):
            since = DAY0 + timedelta(seconds=rng.randrange(-600, 3 * 3600))
            until = rng.choice([None, since + timedelta(seconds=rng.randrange(4 * 3600))])
            assert summed(conn, since, until) == scan(conn, since, until), (since, until)
