"""What registered adapters cost a live stack: 10, 1,000 and 10,000 registered, jobs on 8 of them.

One stack (a private ``redis-server``, a SQLite registry, the gateway, one
worker); adapters are added between the phases (straight into the registry:
the API validates each, which takes minutes for thousands). Per phase:

- **idle Redis commands per second** with the worker idle after the jobs,
  its adapters resident (Redis's own ``total_commands_processed``, over
  ``--idle-s`` seconds: Celery's polling, heartbeats and loraq's planner);
- **jobs per second** of the same jobs on the same 8 adapters;
- **plan tick**: the worker's read of the queues (:class:`QueueReader`: the
  backlog index, then the queues with work and the resident ones), timed in
  this process against the same Redis, beside the read the planner did
  before the index (every registered adapter's queue, ``read_states`` over
  all of them) on the same Redis.

Prints one JSON line per figure::

    python bench/adapters.py
    python bench/adapters.py --jobs 200 --idle-s 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from e2e import WORKER_ENV, Pipeline, emit, make_jobs  # noqa: E402

from gateway.processes import start_redis  # noqa: E402
from gateway.stack import register_demo_copies, wait_for_workers  # noqa: E402
from workers.contract.broker import read_states  # noqa: E402
from workers.demo_model.skills import SKILLS  # noqa: E402
from workers.services.planner import QueueReader  # noqa: E402

PHASES = (10, 1000, 10_000)
SERVED = 8  # adapters the jobs go to


def idle_commands_per_s(client: redis.Redis, seconds: float) -> float:
    before = int(client.info("stats")["total_commands_processed"])
    time.sleep(seconds)
    after = int(client.info("stats")["total_commands_processed"])
    return (after - before - 1) / seconds


def tick_ms(read: Callable[[], object], repeat: int = 50) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        read()
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=400, help="jobs per phase, on the same 8 adapters")
    parser.add_argument("--idle-s", type=float, default=5.0, help="seconds of idle Redis traffic counted")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    skills = sorted(SKILLS)
    served = [f"{skills[i % len(skills)]}-{i}" for i in range(SERVED)]
    jobs = make_jobs(args.jobs, served, seed=7)
    figures: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="loraq-bench-adapters-") as tmp:
        home = Path(tmp)
        server = start_redis(home / "redis", log=home / "redis.log")
        client = redis.Redis.from_url(server.url)
        pipeline = Pipeline(home, server.url, served)
        try:
            pipeline.stack.spawn_worker("w1", extra_env=WORKER_ENV)
            wait_for_workers(pipeline.stack, count=1, timeout=120)
            registered = SERVED + 1  # and the reserved base adapter, created on first use
            for phase in PHASES:
                extra = [f"idle-{i:05d}" for i in range(registered, phase)]
                register_demo_copies(pipeline.sessions, skill="upper", names=extra)  # no job names them
                registered = max(registered, phase)
                elapsed = pipeline.run(jobs, max_tokens=args.max_tokens, concurrency=16, label=f"{phase} registered")
                time.sleep(2)  # the worker idle, its 8 adapters resident: the steady state between bursts
                idle = idle_commands_per_s(client, args.idle_s)
                reader = QueueReader(client, limit=256)
                names = served + extra
                figures[phase] = {
                    "idle_cmds_per_s": idle,
                    "jobs_per_s": len(jobs) / elapsed,
                    "plan_tick_ms": tick_ms(lambda r=reader: r.read(set(served))),
                    "scan_all_tick_ms": tick_ms(lambda n=names: read_states(client, n), repeat=5),
                }
                print(f"{phase} registered: {figures[phase]}", file=sys.stderr)
        finally:
            pipeline.close()
            server.stop()
    report(figures)


def report(figures: dict[int, dict[str, float]]) -> None:
    low, mid, high = (figures[p] for p in PHASES)
    emit(
        "idle_redis_cmds_10000_over_10",
        high["idle_cmds_per_s"] / low["idle_cmds_per_s"],
        goal="<= 1.5",
        idle_cmds_per_s={str(p): round(f["idle_cmds_per_s"], 1) for p, f in figures.items()},
    )
    emit(
        "jobs_per_s_1000_over_10",
        mid["jobs_per_s"] / low["jobs_per_s"],
        goal=">= 0.9",
        jobs_per_s={str(p): round(f["jobs_per_s"], 1) for p, f in figures.items()},
    )
    emit("jobs_per_s_10000_over_10", high["jobs_per_s"] / low["jobs_per_s"])
    emit(
        "plan_tick_ms",
        high["plan_tick_ms"],
        registered=PHASES[-1],
        per_phase={str(p): round(f["plan_tick_ms"], 3) for p, f in figures.items()},
        scan_all_registered_ms=round(high["scan_all_tick_ms"], 2),
        scan_all_over_index=round(high["scan_all_tick_ms"] / high["plan_tick_ms"], 1),
    )


if __name__ == "__main__":
    main()
