"""The real pipeline, end to end: gateway -> Redis -> worker(s) -> registry.

Five runs on the same jobs (short strings over 20 adapters named after the
demo skills, Zipf(1.1) popularity, greedy, up to 32 new tokens), side by
side in one process so machine noise hits all of them:

- **drain**: every job is POSTed with no worker running, then the workers
  start; the clock runs from the first job started to the last finished (as
  the registry recorded them): the queue machinery at its best case, a backlog.
- **bulk**: the same jobs as one Batch API file (messages of up to
  ``LORAQ_BULK_CHUNK_JOBS`` jobs), from the batch's creation to ``completed``.
- **loraq**: real processes (a private ``redis-server``, a SQLite registry,
  the gateway under uvicorn, ``--workers`` Celery workers with the sticky
  consumer). Jobs are POSTed concurrently while the workers drain them; the
  clock runs from the first POST to the last terminal row.
- **script**: what a team writes without loraq (``--quick`` only): every
  adapter in one PEFT model, jobs sorted by adapter, ``set_adapter`` +
  ``generate`` over batches of 16, in this process.
- **engine**: the worker's engine alone in this process, on the same jobs
  sorted by adapter, submitted at once (the ceiling the pipeline can reach).
- **naive**: one Celery task per job with PEFT ``set_adapter`` per job
  (``bench/naive_worker.py``), through the same gateway, Redis and registry,
  on the first ``--naive-jobs`` jobs (it is slow; rates are compared).

Prints one JSON line per figure::

    python bench/e2e.py                # 10k jobs, 20 adapters, one worker
    python bench/e2e.py --jobs 2000 --naive-jobs 300
    python bench/e2e.py --jobs 3000 --naive-jobs 0   # no naive run
    python bench/e2e.py --jobs 3000 --quick          # drain, bulk and the engine alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from sqlalchemy import func, select
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.processes import start_redis, stop_process_group  # noqa: E402
from gateway.stack import start_gateway, wait_for_workers  # noqa: E402
from registry.db import make_engine, session_factory  # noqa: E402
from registry.models import Job  # noqa: E402
from workers.demo_model import adapter_dir  # noqa: E402
from workers.demo_model.skills import SKILLS  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled")
WORKER_ENV = {"LORAQ_BATCH_WAIT_MS": "20"}


@dataclass(frozen=True)
class JobSpec:
    adapter: str
    prompt: str


def make_jobs(n: int, adapters: list[str], seed: int) -> list[JobSpec]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** 1.1 for i in range(len(adapters))]
    letters = "abcdefghijklmnopqrstuvwxyz "
    return [
        JobSpec(
            adapter=rng.choices(adapters, weights)[0],
            prompt="".join(rng.choice(letters) for _ in range(rng.randint(6, 20))).strip() or "x",
        )
        for _ in range(n)
    ]


def emit(figure: str, value: float, **extra: object) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 4), **extra}), flush=True)


class Pipeline:
    """Redis, registry, gateway, and the workers of one run, in a temporary home."""

    def __init__(
        self,
        home: Path,
        redis_url: str,
        adapters: list[str],
        db_url: str | None = None,
        gateway_env: dict[str, str] | None = None,
        gateway_workers: int = 1,
    ) -> None:
        self.redis_url = redis_url
        self.stack = start_gateway(
            home, redis_url=redis_url, database_url=db_url, gateway_env=gateway_env, gateway_workers=gateway_workers
        )
        self.retries = 0  # POSTs retried after a dropped connection
        self.post_s = 0.0  # the drain's POSTs, no worker running
        self.engine = make_engine(self.stack.database_url)
        self.sessions = session_factory(self.engine)
        self.headers = {"Authorization": f"Bearer {self.stack.admin_key}"}
        with httpx.Client(base_url=self.stack.url, headers=self.headers, timeout=30) as http:
            for name in adapters:
                skill = name.rsplit("-", 1)[0]
                resp = http.post("/v1/adapters", json={"name": name, "uri": str(adapter_dir(skill))})
                resp.raise_for_status()

    def terminal(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).where(Job.status.in_(TERMINAL))) or 0)

    def statuses(self) -> dict[str, int]:
        with self.sessions() as s:
            return {k: int(v) for k, v in s.execute(select(Job.status, func.count()).group_by(Job.status)).all()}

    def run(self, jobs: list[JobSpec], *, max_tokens: int, concurrency: int, label: str) -> float:
        """Submit ``jobs`` concurrently, wait until all are terminal; seconds from first POST to last result."""
        before = self.terminal()
        started = time.perf_counter()
        asyncio.run(self._submit(jobs, max_tokens=max_tokens, concurrency=concurrency, label=label))
        submitted = time.perf_counter() - started
        self._wait_terminal(before + len(jobs), label)
        elapsed = time.perf_counter() - started
        print(
            f"{label}: submitted in {submitted:.1f}s ({self.retries} POSTs retried so far), finished in {elapsed:.1f}s",
            file=sys.stderr,
        )
        return elapsed

    def drain(self, jobs: list[JobSpec], *, max_tokens: int, concurrency: int, workers: int) -> float:
        """Publish every job with no worker running, then start ``workers``: seconds from the first job
        started to the last one finished, as the registry recorded them (the backlog's drain time).
        The POSTs alone are timed too (``post_s``): the rate at which the gateway accepts jobs with
        nothing else running, one of the two bounds of the concurrent run."""
        assert self.terminal() == 0 and not self.statuses(), "the drain runs first, on an empty registry"
        started = time.perf_counter()
        asyncio.run(self._submit(jobs, max_tokens=max_tokens, concurrency=concurrency, label="drain"))
        self.post_s = time.perf_counter() - started
        for i in range(workers):
            self.stack.spawn_worker(f"w{i}", extra_env=WORKER_ENV)
        self._wait_terminal(len(jobs), "drain")
        with self.sessions() as s:
            first, last = s.execute(select(func.min(Job.started_at), func.max(Job.finished_at))).one()
        return float((last - first).total_seconds())

    def bulk(self, jobs: list[JobSpec], *, max_tokens: int, home: Path) -> float:
        """The same jobs as one Batch API file (``/v1/completions`` lines, greedy): seconds from the
        batch's creation to its ``completed`` status, with the workers already running."""
        data = home / "bulk.jsonl"
        with data.open("wb") as f:
            for i, job in enumerate(jobs):
                body = {"model": job.adapter, "prompt": job.prompt, "max_tokens": max_tokens, "temperature": 0}
                line = {"custom_id": f"b{i}", "method": "POST", "url": "/v1/completions", "body": body}
                f.write(json.dumps(line).encode() + b"\n")
        with httpx.Client(base_url=self.stack.url, headers=self.headers, timeout=120) as http, data.open("rb") as f:
            file_id = http.post("/v1/files", files={"file": ("bulk.jsonl", f)}, data={"purpose": "batch"}).json()["id"]
            started = time.perf_counter()
            batch = http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions"}).json()
            with tqdm(total=len(jobs), desc="bulk done", file=sys.stderr, unit="job") as bar:
                while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                    time.sleep(0.5)
                    batch = http.get(f"/v1/batches/{batch['id']}").json()
                    bar.update(batch["request_counts"]["completed"] - bar.n)
        if batch["status"] != "completed" or batch["request_counts"]["failed"]:
            raise RuntimeError(f"bulk batch ended {batch['status']}: {batch['request_counts']}")
        return time.perf_counter() - started

    def _wait_terminal(self, total: int, label: str) -> None:
        with tqdm(total=total, desc=f"{label} done", file=sys.stderr, unit="job") as bar:
            done = self.terminal()
            bar.update(done)
            stalled_since = time.monotonic()
            while done < total:
                time.sleep(0.2)
                now = self.terminal()
                if now > done:
                    bar.update(now - done)
                    done = now
                    stalled_since = time.monotonic()
                elif dead := self.stack.dead():
                    raise RuntimeError(f"{dead} died; logs in {self.stack.config.log_dir}")
                elif time.monotonic() - stalled_since > 120:
                    raise RuntimeError(f"no progress for 120 s: {self.statuses()}")

    async def _submit(self, jobs: list[JobSpec], *, max_tokens: int, concurrency: int, label: str) -> None:
        queue: asyncio.Queue[tuple[int, JobSpec]] = asyncio.Queue()
        for item in enumerate(jobs):
            queue.put_nowait(item)
        bar = tqdm(total=len(jobs), desc=f"{label} submit", file=sys.stderr, unit="job")
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=self.stack.url, headers=self.headers, timeout=60, limits=limits) as c:

            async def post_all() -> None:
                while not queue.empty():
                    i, job = queue.get_nowait()
                    body = {
                        "adapter": job.adapter,
                        "prompt": job.prompt,
                        "max_tokens": max_tokens,
                        "idempotency_key": f"{label}-{i}",  # a retried POST never makes a second job
                    }
                    for attempt in range(4):
                        try:
                            resp = await c.post("/v1/jobs", json=body)
                            break
                        except httpx.TransportError:
                            if attempt == 3:
                                raise
                            self.retries += 1
                    if resp.status_code not in (200, 202):
                        raise RuntimeError(f"submit failed: {resp.status_code} {resp.text}")
                    bar.update()

            await asyncio.gather(*(post_all() for _ in range(concurrency)))
        bar.close()

    def worker_loads(self) -> int:
        """Adapter loads (swaps) the live workers announced in their heartbeats."""
        client = redis.Redis.from_url(self.redis_url)
        return sum(json.loads(client.get(k) or b"{}").get("loads", 0) for k in client.keys("loraq:worker:*"))

    def batch_rows(self) -> list[int]:
        """Rows of every batch the workers logged."""
        rows = []
        for log in (self.stack.config.log_dir or Path()).glob("w*.log"):
            rows += [int(m) for m in re.findall(r"batch of (\d+) rows", log.read_text(errors="replace"))]
        return rows

    def stop_workers(self) -> None:
        for name in [n for n in self.stack.procs if n != "gateway"]:
            stop_process_group(self.stack.procs.pop(name), timeout=30)

    def close(self) -> None:
        self.stack.stop()
        self.engine.dispose()


def engine_alone(jobs: list[JobSpec], *, max_tokens: int, rows: int, max_loras: int) -> tuple[float, int]:
    """The worker's engine in this process on the same jobs, sorted by adapter, all submitted at once
    (its continuous batching keeps ``rows`` running)."""
    from registry.artifacts.checks import file_sha256
    from registry.schemas import SamplingParams
    from workers.engine import EngineConfig, LoraEngine
    from workers.generation import AdapterRef, GenRequest
    from workers.settings import DEMO_BASE

    engine = LoraEngine(EngineConfig(base_model=DEMO_BASE, max_loras=max_loras, max_rows=rows))
    sampling = SamplingParams(max_tokens=max_tokens)
    refs = {}
    for name in sorted({j.adapter for j in jobs}):
        path = adapter_dir(name.rsplit("-", 1)[0])
        refs[name] = AdapterRef(
            key=name, uri=str(path), sha256=file_sha256(path / "adapter_model.safetensors"), name=name
        )
    ordered = sorted(range(len(jobs)), key=lambda i: jobs[i].adapter)
    requests = [
        GenRequest(job_id=str(i), prompt=jobs[i].prompt, sampling=sampling, adapter=refs[jobs[i].adapter])
        for i in ordered
    ]
    started = time.perf_counter()
    chunk = 50 * rows  # in chunks only for the progress bar; each chunk keeps the batch full
    for i in tqdm(range(0, len(requests), chunk), desc="engine alone", file=sys.stderr, unit="chunk"):
        engine.generate(requests[i : i + chunk])
    return time.perf_counter() - started, engine.adapter_loads()


def script_alone(jobs: list[JobSpec], *, max_tokens: int, batch: int = 16) -> float:
    """The script a team writes without loraq: every adapter loaded into one PEFT model, jobs sorted
    by adapter, ``set_adapter`` then ``generate`` (greedy) over batches of ``batch``. Seconds."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.settings import DEMO_BASE

    tok = AutoTokenizer.from_pretrained(DEMO_BASE)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(DEMO_BASE, dtype=torch.float32).eval()
    names = sorted({j.adapter for j in jobs})
    model = PeftModel.from_pretrained(base, adapter_dir(names[0].rsplit("-", 1)[0]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapter_dir(name.rsplit("-", 1)[0]), adapter_name=name)
    by_adapter = {name: [j for j in jobs if j.adapter == name] for name in names}
    started = time.perf_counter()
    for name, rows in tqdm(by_adapter.items(), desc="script", file=sys.stderr, unit="adapter"):
        model.set_adapter(name)
        for i in range(0, len(rows), batch):
            enc = tok([j.prompt for j in rows[i : i + batch]], return_tensors="pt", padding=True)
            with torch.inference_mode():
                model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--adapters", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--naive-jobs", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent HTTP submitters")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it (logs, database)")
    parser.add_argument(
        "--quick", action="store_true", help="the drain, the bulk file and the engine alone; no POSTs, no naive run"
    )
    args = parser.parse_args()

    skills = sorted(SKILLS)
    adapters = [f"{skills[i % len(skills)]}-{i}" for i in range(args.adapters)]
    jobs = make_jobs(args.jobs, adapters, args.seed)
    settings = WorkerSettings()  # what a worker picks by default
    rows, max_loras = settings.max_batch_rows, settings.max_loras
    print(f"worker defaults: {rows} rows, {max_loras} adapter slots", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="loraq-bench-") as tmp:
        home = Path(tmp) if args.keep is None else args.keep
        home.mkdir(parents=True, exist_ok=True)
        redis_server = start_redis(home / "redis", log=home / "redis.log")
        pipeline = Pipeline(home, redis_server.url, adapters)
        try:
            drain_s = pipeline.drain(
                jobs, max_tokens=args.max_tokens, concurrency=args.concurrency, workers=args.workers
            )
            drain_loads = pipeline.worker_loads()
            bulk_s = pipeline.bulk(jobs, max_tokens=args.max_tokens, home=home)
            if args.quick:
                return quick_report(args, drain_s, drain_loads, bulk_s, rows, max_loras, jobs)
            wait_for_workers(pipeline.stack, count=args.workers, timeout=120)
            ours_s = pipeline.run(jobs, max_tokens=args.max_tokens, concurrency=args.concurrency, label="loraq")
            statuses = pipeline.statuses()
            e2e_loads = pipeline.worker_loads() - drain_loads
            batches = pipeline.batch_rows()
            pipeline.stop_workers()
            naive = jobs[: args.naive_jobs]
            naive_s = run_naive(pipeline, naive, adapters, args) if naive else None
        finally:
            pipeline.close()
            redis_server.stop()

    engine_s, engine_loads = engine_alone(jobs, max_tokens=args.max_tokens, rows=rows, max_loras=max_loras)
    engine_rate = args.jobs / engine_s
    ours = args.jobs / ours_s
    common = {"jobs": args.jobs, "adapters": args.adapters, "workers": args.workers, "rows": rows}
    mean_rows = round(sum(batches) / max(1, len(batches)), 2)
    emit_drain(args, drain_s, drain_loads, engine_rate, engine_loads, rows)
    emit("bulk_over_engine", args.jobs / bulk_s / engine_rate, bulk_s=round(bulk_s, 2), goal=">= 0.7")
    emit("e2e_jobs_per_s", ours, seconds=round(ours_s, 2), statuses=statuses, mean_batch_rows=mean_rows, **common)
    emit("e2e_over_engine", ours / engine_rate, engine_jobs_per_s=round(engine_rate, 2))
    post_rate = args.jobs / pipeline.post_s
    emit(
        "e2e_over_bound",
        ours / min(engine_rate, post_rate),
        post_alone_jobs_per_s=round(post_rate, 2),
        engine_jobs_per_s=round(engine_rate, 2),
        goal=">= 0.8",
    )
    emit("e2e_loads_per_1k_jobs", 1000 * e2e_loads / args.jobs, loads=e2e_loads)
    if naive_s is not None:
        naive_rate = len(naive) / naive_s
        emit("e2e_over_naive", ours / naive_rate, naive_jobs=len(naive), naive_jobs_per_s=round(naive_rate, 2))


def emit_drain(
    args: argparse.Namespace, drain_s: float, drain_loads: int, engine_rate: float, engine_loads: int, rows: int
) -> None:
    common = {"jobs": args.jobs, "adapters": args.adapters, "workers": args.workers, "rows": rows}
    emit("drain_over_engine", args.jobs / drain_s / engine_rate, drain_s=round(drain_s, 2), goal=">= 0.8", **common)
    emit("loads_per_1k_jobs", 1000 * drain_loads / args.jobs, loads=drain_loads, engine_alone_loads=engine_loads)


def quick_report(
    args: argparse.Namespace,
    drain_s: float,
    drain_loads: int,
    bulk_s: float,
    rows: int,
    max_loras: int,
    jobs: list[JobSpec],
) -> None:
    engine_s, engine_loads = engine_alone(jobs, max_tokens=args.max_tokens, rows=rows, max_loras=max_loras)
    script_s = script_alone(jobs, max_tokens=args.max_tokens)
    emit_drain(args, drain_s, drain_loads, args.jobs / engine_s, engine_loads, rows)
    emit("bulk_over_engine", args.jobs / bulk_s / (args.jobs / engine_s), bulk_s=round(bulk_s, 2), goal=">= 0.7")
    emit("bulk_over_script", script_s / bulk_s, script_jobs_per_s=round(args.jobs / script_s, 1), goal=">= 2.5")


def run_naive(pipeline: Pipeline, naive: list[JobSpec], adapters: list[str], args: argparse.Namespace) -> float:
    """One Celery task per job with PEFT's set_adapter per job (bench/naive_worker.py), same gateway."""
    queues = ",".join(f"lora.{a}" for a in adapters)
    argv = [sys.executable, "-m", "celery", "-A", "naive_worker", "worker", "-P", "solo", "-Q", queues]
    pipeline.stack.spawn("naive", argv, extra_env={"PYTHONPATH": str(ROOT / "bench")})
    wait_for_workers(pipeline.stack, count=1, timeout=120)
    return pipeline.run(naive, max_tokens=args.max_tokens, concurrency=args.concurrency, label="naive")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up (children, Redis) as Ctrl-C does
    main()
