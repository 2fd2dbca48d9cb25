"""Push, not poll: completion notifications and token streaming, measured.

The gateway runs in this process (uvicorn on a thread, over a private
``redis-server`` and a SQLite registry), so its SQL statements can be counted.

- **notify_p50_ms, notify_p99_ms**: one long-poll (``GET /v1/jobs/{id}?wait=30``)
  waits; the bench records the job's result in the registry as a worker does,
  then announces it with the worker's own :class:`~workers.contract.notify.Notifier`;
  the clock runs from the commit to the client's return.
- **db_queries_per_waiting_client_s**: ``--clients`` long-polls wait on jobs that
  never end (no worker); the gateway's SQL statements are counted over a
  ``--window`` of seconds once all of them are waiting (their first read and
  authentication excluded), less those of a window with nobody waiting (the batch
  supervisor's). Polling each (50 → 500 ms) cost 2 per client per second.
- **first_token_over_total**: a real Celery worker (a subprocess) runs a streamed
  ``/v1/completions`` of 64 tokens through the official ``openai`` client; time to
  the first content chunk over the time to ``[DONE]``, median over ``--streams``
  (the demo model decodes a token in about a millisecond on CPU, so the fixed
  costs before the first token, queueing and the batch's wait, weigh heavily).

Prints one JSON line per figure::

    python bench/push.py [--trials 200] [--clients 500] [--window 10] [--streams 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
import uvicorn
from openai import AsyncOpenAI
from pydantic import SecretStr
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.app import create_app  # noqa: E402
from gateway.processes import free_port, start_redis  # noqa: E402
from gateway.settings import GatewaySettings  # noqa: E402
from gateway.stack import Stack, StackConfig, wait_for_workers  # noqa: E402
from registry import jobs  # noqa: E402
from registry.db import transaction  # noqa: E402
from registry.migrate import upgrade  # noqa: E402
from registry.models import utcnow  # noqa: E402
from registry.schemas import FinishReason, GenerationResult  # noqa: E402
from registry.settings import DatabaseSettings  # noqa: E402
from workers.contract.notify import Notifier, push_client  # noqa: E402
from workers.contract.settings import QueueSettings  # noqa: E402
from workers.demo_model import adapter_dir  # noqa: E402

ADMIN = "bench-push-admin"
JOB = {"adapter": "upper", "prompt": "waiting", "max_tokens": 8}
STREAM_PROMPT = "a" * 70  # the demo model copies it to the 64-token cap (it ends shorter phrases sooner)
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
SETTLE_S = 3.0


def emit(figure: str, value: float, **extra: object) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 4), **extra}), flush=True)


class Gateway:
    """The app under uvicorn on a thread, with a counter on its database engine."""

    def __init__(self, home: Path, redis_url: str) -> None:
        self.db = DatabaseSettings(home=home)
        upgrade(self.db.url())
        settings = GatewaySettings(admin_key=SecretStr(ADMIN), db=self.db, queue=QueueSettings(redis_url=redis_url))
        self.app = create_app(settings)
        self.sessions: sessionmaker[Session] = self.app.state.sessions
        engine: Engine = self.sessions.kw["bind"]
        self.statements = 0
        event.listen(engine, "before_cursor_execute", self._count)
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(self.app, port=port, log_level="warning", limit_concurrency=4096))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def _count(self, *_: Any) -> None:
        self.statements += 1

    @contextmanager
    def running(self) -> Iterator[Gateway]:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        try:
            yield self
        finally:
            self.server.should_exit = True
            self.thread.join(15)

    def waiting(self) -> int:
        return len(self.app.state.job_events.waiters)

    def record(self, job_id: str) -> float:
        """Commit a result as a worker's runtime does; returns when the commit returned."""
        result = GenerationResult(text="WAITING", finish_reason=FinishReason.STOP, prompt_tokens=8, completion_tokens=7)
        outcome = jobs.Outcome(
            job_id=job_id, worker="bench", queue_wait_s=0.0, run_time_s=0.0, finished_at=utcnow(), result=result
        )
        with transaction(self.sessions) as session:
            jobs.record(session, [outcome])
        return time.perf_counter()


async def until(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.01)


async def notify_latency(gateway: Gateway, notifier: Notifier, trials: int) -> list[float]:
    """Seconds from a committed result to its long-poll client's return, one waiting client at a time."""
    latencies = []
    async with httpx.AsyncClient(base_url=gateway.url, headers=HEADERS, timeout=60) as http:
        for _ in range(trials):
            job_id = (await http.post("/v1/jobs", json=JOB)).json()["id"]
            poll = asyncio.create_task(http.get(f"/v1/jobs/{job_id}", params={"wait": 30}))
            await until(lambda: gateway.waiting() == 1)
            committed = await asyncio.to_thread(gateway.record, job_id)
            await asyncio.to_thread(notifier.recorded, [job_id])
            resp = await poll
            latencies.append(time.perf_counter() - committed)
            assert resp.json()["status"] == "succeeded", resp.text
    return latencies


async def statements_per_s(gateway: Gateway, window: float) -> float:
    before, started = gateway.statements, time.perf_counter()
    await asyncio.sleep(window)
    return (gateway.statements - before) / (time.perf_counter() - started)


async def queries_while_waiting(gateway: Gateway, clients: int, window: float) -> tuple[float, float]:
    """SQL statements per waiting client per second (``clients`` long-polls waiting ``window`` seconds),
    beyond what the gateway runs with nobody waiting (its batch supervisor); and that baseline per second."""
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(base_url=gateway.url, headers=HEADERS, timeout=120, limits=limits) as http:
        ids = [(await http.post("/v1/jobs", json=JOB)).json()["id"] for _ in range(clients)]
        idle = await statements_per_s(gateway, window)
        wait = window + 30
        polls = [asyncio.create_task(http.get(f"/v1/jobs/{job_id}", params={"wait": wait})) for job_id in ids]
        await until(lambda: gateway.waiting() == clients)
        await asyncio.sleep(SETTLE_S)  # their first reads, behind the thread pool, are not the steady state
        busy = await statements_per_s(gateway, window)
        for job_id in ids:  # cancelling wakes every poll through the same channel
            await http.delete(f"/v1/jobs/{job_id}")
        statuses = {(await p).json()["status"] for p in polls}
        assert statuses == {"cancelled"}, statuses
    return max(0.0, busy - idle) / clients, idle


async def stream_timings(url: str, streams: int) -> list[tuple[float, float, int]]:
    """(seconds to the first content chunk, seconds to the end, completion tokens) per streamed request."""
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN, max_retries=0, timeout=120)
    timings = []
    for _ in range(streams + 1):  # the first warms the worker up (adapter load) and is not counted
        started, first, tokens = time.perf_counter(), None, 0
        stream = await client.completions.create(
            model="upper",
            prompt=STREAM_PROMPT,
            max_tokens=64,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - started
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        timings.append((first or 0.0, time.perf_counter() - started, tokens))
    await client.close()
    return timings[1:]


def spawn_worker(home: Path, gateway: Gateway, redis_url: str) -> Stack:
    stack = Stack(
        config=StackConfig(home=home, log_dir=home / "logs", metrics_port=None),
        redis_url=redis_url,
        database_url=gateway.db.url(),
        admin_key=ADMIN,
        flower_auth="",
    )
    stack.spawn_worker("w0", extra_env={"LORAQ_BATCH_WAIT_MS": "20"})
    try:
        wait_for_workers(stack, count=1, timeout=120)
    except RuntimeError:
        print((home / "logs" / "w0.log").read_text()[-3000:], file=sys.stderr)
        stack.stop()
        raise
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraq-bench-push-") as tmp:
        home = Path(tmp)
        server = start_redis(home / "redis", log=home / "redis.log")
        gateway = Gateway(home, server.url)
        stack: Stack | None = None
        try:
            with gateway.running():
                httpx.post(
                    f"{gateway.url}/v1/adapters",
                    json={"name": "upper", "uri": str(adapter_dir("upper"))},
                    headers=HEADERS,
                ).raise_for_status()
                latencies = asyncio.run(notify_latency(gateway, Notifier(push_client(server.url)), args.trials))
                per_client, idle = asyncio.run(queries_while_waiting(gateway, args.clients, args.window))
                redis.Redis.from_url(server.url).flushdb()  # the cancelled jobs' messages: nothing for the worker
                stack = spawn_worker(home, gateway, server.url)
                timings = asyncio.run(stream_timings(gateway.url, args.streams))
        finally:
            if stack is not None:
                stack.stop()
            server.stop()
    ms = sorted(x * 1000 for x in latencies)
    common = {"trials": len(ms), "unit": "ms", "from": "result committed", "to": "long-poll client returned"}
    emit("notify_p50_ms", statistics.median(ms), stat="p50", goal=20, **common)
    emit("notify_p99_ms", ms[min(len(ms) - 1, int(0.99 * len(ms)))], stat="p99", **common)
    emit(
        "db_queries_per_waiting_client_s",
        per_client,
        clients=args.clients,
        window_s=args.window,
        idle_gateway_statements_s=round(idle, 2),
        goal=0,
        polling_was=2.0,
    )
    ratios = [first / total for first, total, _ in timings]
    emit(
        "first_token_over_total",
        statistics.median(ratios),
        stat="median",
        streams=len(timings),
        completion_tokens=sorted({t for _, _, t in timings}),
        first_token_ms=round(statistics.median(f for f, _, _ in timings) * 1000, 1),
        total_ms=round(statistics.median(t for _, t, _ in timings) * 1000, 1),
        goal=0.2,
    )


if __name__ == "__main__":
    main()
