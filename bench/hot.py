"""Hot availability: from registering a new adapter to its first job's result, with a worker running.

Real processes (a private Redis, a SQLite registry, the gateway, one Celery
worker), as in ``bench/e2e.py``. Each trial registers a new adapter name
through the API, submits one job for it at once and long-polls the result;
the clock runs from the registration request to the result. The worker has
to learn of the new queue (the job's publish puts it in the backlog index,
which workers read every plan tick), consume it, load the adapter and run
the job.

Prints one JSON line per figure::

    python bench/hot.py [--trials 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from e2e import WORKER_ENV, Pipeline  # same directory

from gateway.processes import start_redis
from gateway.stack import wait_for_workers
from workers.demo_model import adapter_dir
from workers.demo_model.skills import SKILLS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    skills = sorted(SKILLS)
    with tempfile.TemporaryDirectory(prefix="loraq-bench-hot-") as tmp:
        home = Path(tmp)
        redis_server = start_redis(home / "redis", log=home / "redis.log")
        pipeline = Pipeline(home, redis_server.url, ["upper-0"])
        try:
            pipeline.stack.spawn_worker("w0", extra_env=WORKER_ENV)
            wait_for_workers(pipeline.stack, count=1, timeout=120)
            http = httpx.Client(base_url=pipeline.stack.url, headers=pipeline.headers, timeout=60)
            times = []
            for i in range(-1, args.trials):  # trial -1 warms the worker up and is not counted
                name, skill = f"hot-{i + 1}", skills[(i + 1) % len(skills)]
                started = time.perf_counter()
                resp = http.post("/v1/adapters", json={"name": name, "uri": str(adapter_dir(skill))})
                resp.raise_for_status()
                job = http.post("/v1/jobs", json={"adapter": name, "prompt": "hot", "max_tokens": 8}).json()
                while (view := http.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json())["status"] in (
                    "queued",
                    "running",
                ):
                    pass
                elapsed = time.perf_counter() - started
                if view["status"] != "succeeded":
                    raise SystemExit(f"trial {i}: job ended {view['status']}: {view}")
                if i >= 0:
                    times.append(elapsed)
                print(f"trial {i}: {elapsed:.3f}s", file=sys.stderr)
        finally:
            pipeline.close()
            redis_server.stop()
    common = {"trials": len(times), "goal_s": 1.0}
    print(
        json.dumps(
            {
                "figure": "register_to_first_result_s",
                "value": round(statistics.median(times), 3),
                "stat": "median",
                **common,
            }
        )
    )
    print(
        json.dumps({"figure": "register_to_first_result_max_s", "value": round(max(times), 3), "stat": "max", **common})
    )


if __name__ == "__main__":
    main()
