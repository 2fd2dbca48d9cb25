"""Webhook delivery, measured: ``python bench/webhooks.py``.

A gateway app in this process (SQLite, a private Redis), its dispatcher with
the default 8 senders, and a loopback receiver (``http.server``, threaded):

- **webhook_deliveries_per_s**: ``--events`` test events recorded at once,
  until the receiver has them all;
- **webhook_delay_ms** (p50, p99): from a job's end being recorded (its
  cancellation: the same transaction writes the delivery) to the receiver
  getting the event, over ``--jobs`` jobs one at a time. The dispatcher
  wakes on the completion notification a job's end publishes (``loraq:done``,
  as a worker's result does); without it, it would find the delivery at its
  next 0.5 s poll.

Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.app import create_app  # noqa: E402
from gateway.processes import start_redis  # noqa: E402
from gateway.settings import GatewaySettings  # noqa: E402
from registry.migrate import upgrade  # noqa: E402
from registry.settings import DatabaseSettings  # noqa: E402
from workers.contract.settings import QueueSettings  # noqa: E402
from workers.demo_model import adapter_dir  # noqa: E402

ADMIN = "bench-admin-key-0123456789"


def emit(figure: str, value: float, **extra: object) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 3), **extra}), flush=True)


class Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}  # subject id -> when it arrived
        self.count = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with lock:
                    outer.count += 1
                    outer.arrived[str(body["data"].get("id"))] = time.perf_counter()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count < count and time.monotonic() < deadline:
            time.sleep(0.005)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraq-webhooks-") as tmp:
        redis_server = start_redis(Path(tmp) / "redis", log=Path(tmp) / "redis.log")
        db = DatabaseSettings(home=Path(tmp))
        upgrade(db.url())
        settings = GatewaySettings(
            admin_key=SecretStr(ADMIN),
            queue=QueueSettings(redis_url=redis_server.url),
            db=db,
            webhook_allow=["127.0.0.0/8"],
        )
        hook = Receiver()
        try:
            with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as client:
                client.post("/v1/adapters", json={"name": "upper", "uri": str(adapter_dir("upper"))})
                client.post("/v1/webhooks/secret")
                started = time.perf_counter()
                for _ in range(args.events):
                    client.post("/v1/webhooks/test", json={"url": hook.url})
                recorded = time.perf_counter() - started
                hook.wait(args.events)
                elapsed = time.perf_counter() - started
                emit(
                    "webhook_deliveries_per_s",
                    args.events / elapsed,
                    events=args.events,
                    recording_s=round(recorded, 2),
                    seconds=round(elapsed, 2),
                    senders=settings.webhook_senders,
                )
                delays = []
                for i in range(args.jobs):
                    body = {"adapter": "upper", "prompt": f"p{i}", "max_tokens": 4, "webhook_url": hook.url}
                    job_id = client.post("/v1/jobs", json=body).json()["id"]
                    ended = time.perf_counter()
                    client.delete(f"/v1/jobs/{job_id}")
                    before = hook.count
                    hook.wait(before + 1, timeout=10)
                    delays.append((hook.arrived[job_id] - ended) * 1000)
                emit("webhook_delay_ms_p50", pct(delays, 0.5), jobs=args.jobs, poll_s=0.5)
                emit("webhook_delay_ms_p99", pct(delays, 0.99), jobs=args.jobs, poll_s=0.5)
        finally:
            hook.server.shutdown()
            redis_server.stop()


if __name__ == "__main__":
    main()
