"""Dependencies down: the gateway answers 503 fast with a code and records nothing."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from gateway.app import create_app
from gateway.processes import free_port, start_redis
from gateway.settings import GatewaySettings
from registry.migrate import upgrade
from registry.models import Job
from registry.settings import DatabaseSettings
from workers.contract.settings import QueueSettings
from workers.demo_model import adapter_dir

ADMIN = "admin-key-for-tests"
JOB = {"adapter": "upper", "prompt": "hello", "max_tokens": 8, "idempotency_key": "retry-me"}


def test_redis_down_gives_a_fast_503_then_the_same_retry_is_accepted(tmp_path: Path) -> None:
    port = free_port()
    db = DatabaseSettings(home=tmp_path)
    upgrade(db.url())
    settings = GatewaySettings(
        admin_key=SecretStr(ADMIN), queue=QueueSettings(redis_url=f"redis://127.0.0.1:{port}/0"), db=db
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        assert client.post("/v1/adapters", json={"name": "upper", "uri": str(adapter_dir("upper"))}).is_success
        started = time.monotonic()
        down = client.post("/v1/jobs", json=JOB)
        elapsed = time.monotonic() - started
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "queue_unavailable"
        assert elapsed < 1.0, f"503 took {elapsed:.2f}s"
        with client.app.state.sessions() as s:  # type: ignore[attr-defined]
            assert s.scalar(select(func.count()).select_from(Job)) == 0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("down")

        server = start_redis(tmp_path / "redis", port=port, log=tmp_path / "redis.log")
        try:
            up = client.post("/v1/jobs", json=JOB)
            assert up.status_code == 202, up.text
            assert up.json()["status"] == "queued"
            assert client.get("/readyz").status_code == 200
        finally:
            server.stop()


def test_database_down_gives_a_fast_503_with_its_code(redis_url: str) -> None:
    dead = DatabaseSettings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    settings = GatewaySettings(admin_key=SecretStr(ADMIN), queue=QueueSettings(redis_url=redis_url), db=dead)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        started = time.monotonic()
        resp = client.post("/v1/jobs", json=JOB)
        assert time.monotonic() - started < 1.0
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "database_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("down")
