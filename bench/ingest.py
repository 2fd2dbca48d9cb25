"""Bulk ingest and single submits through the real gateway, on SQLite and on PostgreSQL.

For each database, with a private ``redis-server`` and the gateway under
uvicorn (one process), no workers (this measures acceptance, not generation):

- **bulk_jobs_per_s**: a ``--lines`` JSONL file (``/v1/completions`` lines over
  20 adapters) is uploaded, then ``POST /v1/batches``; the clock runs until
  every line is validated, recorded as a job row and published to Redis
  (``ingest_done`` and ``published_lines == ingested_lines``). ``peak_rss_mb``
  is the gateway's high-water mark (VmHWM) after it, next to its RSS before.
- **post_jobs_per_s**: ``POST /v1/jobs`` from ``--concurrency`` concurrent
  clients, ``--posts`` requests, every one answered 202.

Each figure carries its goal and ``over_goal``; bulk also ``over_post`` (the
same jobs through the bulk path against one request per job). One JSON line
per figure::

    python bench/ingest.py                      # 100k lines, SQLite and PostgreSQL
    python bench/ingest.py --lines 20000 --db sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import redis
from e2e import Pipeline, emit  # bench/ is on sys.path when run as a script
from sqlalchemy import create_engine, make_url, select, text

from gateway.processes import start_redis
from registry.models import BatchRow
from workers.demo_model.skills import SKILLS

POSTGRES = os.environ.get("LORAQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_file(path: Path, lines: int, adapters: list[str]) -> None:
    with path.open("wb") as f:
        for i in range(lines):
            body = {"model": adapters[i % len(adapters)], "prompt": f"line {i} of the nightly run", "max_tokens": 16}
            f.write(orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions", "body": body}))
            f.write(b"\n")


def postgres_schema() -> tuple[str, str]:
    """A fresh schema on the local PostgreSQL; returns (url with search_path, schema)."""
    schema = f"bench_{secrets.token_hex(4)}"
    engine = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    url = make_url(POSTGRES).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


def drop_schema(schema: str) -> None:
    engine = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bulk(pipeline: Pipeline, data: Path, lines: int) -> tuple[float, float, int]:
    """Seconds from POST /v1/batches to every line recorded and published; upload seconds; messages."""
    with httpx.Client(base_url=pipeline.stack.url, headers=pipeline.headers, timeout=600) as http:
        started = time.perf_counter()
        with data.open("rb") as f:
            resp = http.post("/v1/files", files={"file": ("bulk.jsonl", f)}, data={"purpose": "batch"})
        resp.raise_for_status()
        uploaded = time.perf_counter() - started
        started = time.perf_counter()
        batch = http.post("/v1/batches", json={"input_file_id": resp.json()["id"], "endpoint": "/v1/completions"})
        batch.raise_for_status()
        batch_id = batch.json()["id"]
        while True:
            with pipeline.sessions() as s:
                row = s.scalar(select(BatchRow).where(BatchRow.id == batch_id))
            if row is not None and row.ingest_done and row.published_lines == row.ingested_lines:
                break
            if pipeline.stack.dead():
                raise RuntimeError(f"gateway died; logs in {pipeline.stack.config.log_dir}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    assert row.total == lines and row.failed == 0, (row.total, row.failed)
    client = redis.Redis.from_url(pipeline.redis_url)
    messages = sum(int(client.llen(k)) for k in client.keys("lora.*"))  # type: ignore[arg-type]
    return elapsed, uploaded, messages


async def posts(pipeline: Pipeline, n: int, adapters: list[str], concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=pipeline.stack.url, headers=pipeline.headers, timeout=60, limits=limits
    ) as http:
        todo = iter(range(n))

        async def worker() -> None:
            for i in todo:
                body = {"adapter": adapters[i % len(adapters)], "prompt": f"post {i}", "max_tokens": 16}
                resp = await http.post("/v1/jobs", json=body)
                assert resp.status_code == 202, resp.text

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def run(db: str, args: argparse.Namespace, adapters: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="loraq-ingest-") as tmp:
        home = Path(tmp)
        data = home / "bulk.jsonl"
        make_file(data, args.lines, adapters)
        mib = round(data.stat().st_size / 2**20, 1)
        redis_server = start_redis(home / "redis", log=home / "redis.log")
        schema = None
        db_url = None
        if db == "postgresql":
            db_url, schema = postgres_schema()
        pipeline = Pipeline(home, redis_server.url, adapters, db_url=db_url, gateway_workers=args.gateway_workers)
        try:
            pid = pipeline.stack.procs["gateway"].pid
            rss_before = memory_mb(pid, "VmRSS")
            seconds, upload_s, messages = bulk(pipeline, data, args.lines)
            peak = memory_mb(pid, "VmHWM")
            post_s = asyncio.run(posts(pipeline, args.posts, adapters, args.concurrency))
        finally:
            pipeline.close()
            redis_server.stop()
            if schema is not None:
                drop_schema(schema)
    bulk_rate = args.lines / seconds
    post_rate = args.posts / post_s
    emit(
        "bulk_jobs_per_s",
        bulk_rate,
        db=db,
        lines=args.lines,
        seconds=round(seconds, 2),
        messages=messages,
        upload_s=round(upload_s, 2),
        file_mib=mib,
        peak_rss_mb=round(peak, 1),
        rss_before_mb=round(rss_before, 1),
        goal=20_000,
        over_goal=round(bulk_rate / 20_000, 4),
        over_post=round(bulk_rate / post_rate, 2),
    )
    emit(
        "post_jobs_per_s",
        post_rate,
        db=db,
        posts=args.posts,
        concurrency=args.concurrency,
        gateway_workers=args.gateway_workers,
        goal=1000,
        over_goal=round(post_rate / 1000, 4),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--gateway-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    skills = sorted(SKILLS)
    adapters = [f"{skills[i % len(skills)]}-{i}" for i in range(20)]
    for db in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
        run(db, args, adapters)


if __name__ == "__main__":
    main()
