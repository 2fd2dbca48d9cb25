"""Soak: many jobs over many adapters, two workers, one killed (SIGKILL) and restarted every minute.

Real processes (a private ``redis-server`` with AOF, a SQLite registry, the
gateway, two Celery workers). The jobs arrive as one Batch API file (the
nightly path), so the run is about the workers, not about POST throughput.
Every ``--kill-every`` seconds one worker, in turn, is killed with SIGKILL
and started again. At the end, from the registry and the batch's files:

- ``lost``: lines accepted that did not end (no job row, or not
  succeeded/failed/cancelled), plus good lines missing from the output file;
- ``duplicated``: job rows beyond one per line, plus output lines beyond one
  per ``custom_id`` (recording is exactly-once; this checks it);
- ``reran``: jobs that started more than once (a kill caught them running;
  recorded once all the same);
- worker RSS at start and at the end (the workers alive then), gateway RSS.

Not run by CI. One JSON line per figure::

    python bench/soak.py                          # 100k jobs, 50 adapters, kill every 60 s
    python bench/soak.py --jobs 20000 --kill-every 60
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from e2e import Pipeline, emit  # bench/ is on sys.path when run as a script
from sqlalchemy import func, select

from gateway.processes import start_redis
from registry.models import BatchRow, Job
from workers.demo_model.skills import SKILLS

WORKER_ENV = {"LORAQ_BATCH_WAIT_MS": "20", "LORAQ_VISIBILITY_TIMEOUT_S": "10", "LORAQ_RECONCILE_INTERVAL_S": "5"}
ENDED = ("succeeded", "failed", "cancelled")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def make_file(path: Path, jobs: int, adapters: list[str]) -> None:
    with path.open("wb") as f:
        for i in range(jobs):
            body = {"model": adapters[i % len(adapters)], "prompt": f"soak line {i}", "max_tokens": 16}
            f.write(orjson.dumps({"custom_id": f"s{i}", "method": "POST", "url": "/v1/completions", "body": body}))
            f.write(b"\n")


def spawn(pipeline: Pipeline, name: str) -> None:
    pipeline.stack.spawn_worker(name, extra_env=WORKER_ENV)


def run(args: argparse.Namespace) -> None:
    skills = sorted(SKILLS)
    adapters = [f"{skills[i % len(skills)]}-{i}" for i in range(args.adapters)]
    with tempfile.TemporaryDirectory(prefix="loraq-soak-") as tmp:
        home = Path(tmp)
        redis_server = start_redis(home / "redis", log=home / "redis.log")
        pipeline = Pipeline(home, redis_server.url, adapters)
        try:
            for name in ("w1", "w2"):
                spawn(pipeline, name)
            data = home / "soak.jsonl"
            make_file(data, args.jobs, adapters)
            http = httpx.Client(base_url=pipeline.stack.url, headers=pipeline.headers, timeout=120)
            with data.open("rb") as f:
                file_id = http.post("/v1/files", files={"file": ("soak.jsonl", f)}, data={"purpose": "batch"}).json()[
                    "id"
                ]
            started = time.monotonic()
            batch = http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions"}).json()
            time.sleep(20)  # warm: both engines loaded and running
            rss_start = {n: rss_mb(pipeline.stack.procs[n].pid) for n in ("w1", "w2")}
            kills, last_kill, victim = 0, time.monotonic(), "w1"
            while True:
                batch = http.get(f"/v1/batches/{batch['id']}").json()
                if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                    break
                if time.monotonic() - last_kill >= args.kill_every:
                    os.kill(pipeline.stack.procs[victim].pid, signal.SIGKILL)
                    pipeline.stack.procs[victim].wait(10)
                    spawn(pipeline, victim)
                    kills, last_kill = kills + 1, time.monotonic()
                    victim = "w2" if victim == "w1" else "w1"
                    counts = batch["request_counts"]
                    print(f"soak: kill {kills}; {counts['completed']}/{counts['total']} done", file=sys.stderr)
                if time.monotonic() - started > args.timeout:
                    raise SystemExit(f"not finished after {args.timeout}s: {batch['request_counts']}")
                time.sleep(1)
            elapsed = time.monotonic() - started
            rss_end = {n: rss_mb(p.pid) for n, p in pipeline.stack.procs.items() if n in ("w1", "w2")}
            gateway_rss = rss_mb(pipeline.stack.procs["gateway"].pid)
            outputs = [
                orjson.loads(x) for x in http.get(f"/v1/files/{batch['output_file_id']}/content").content.splitlines()
            ]
            with pipeline.sessions() as s:
                rows = int(s.scalar(select(func.count()).select_from(Job)) or 0)
                distinct = int(s.scalar(select(func.count(func.distinct(Job.custom_id)))) or 0)
                ended = int(s.scalar(select(func.count()).where(Job.status.in_(ENDED))) or 0)
                reran = int(s.scalar(select(func.count()).where(Job.attempts > 1)) or 0)
                total = int(s.scalar(select(BatchRow.total)) or 0)
        finally:
            pipeline.close()
            redis_server.stop()
    ids = [o["custom_id"] for o in outputs]
    lost = (args.jobs - ended) + (args.jobs - len(set(ids)))
    duplicated = (rows - distinct) + (len(ids) - len(set(ids)))
    common = {"jobs": args.jobs, "adapters": args.adapters, "workers": 2, "kills": kills, "seconds": round(elapsed, 1)}
    emit("soak_lost", lost, goal=0, accepted=total, ended=ended, output_lines=len(ids), **common)
    emit("soak_duplicated", duplicated, goal=0, job_rows=rows, **common)
    emit("soak_reran", reran, note="started more than once, recorded once", **common)
    emit("soak_jobs_per_s", args.jobs / elapsed, **common)
    emit("soak_worker_rss_mb", max(rss_end.values()), start=rss_start, end=rss_end, gateway_end=gateway_rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds between worker kills")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
