"""Bad input gets a JSON error with a stable code and changes nothing.

The gateway runs in-process (FastAPI's TestClient) over a real SQLite
registry and a real Redis server; only the Celery worker is absent, which
these requests never reach.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from gateway.app import create_app
from gateway.settings import GatewaySettings
from registry.migrate import upgrade
from registry.models import AdapterVersion, Job
from registry.settings import DatabaseSettings
from workers.contract.settings import QueueSettings
from workers.demo_model import DEMO_ADAPTERS, DEMO_BASE, DEMO_DIR, adapter_dir

ADMIN = "admin-key-for-tests"


@contextmanager
def make_gateway(
    tmp_path: Path,
    redis_url: str,
    *,
    extra_roots: tuple[str, ...] = (),
    database_url: str | None = None,
    **limits: int,
) -> Iterator[TestClient]:
    """A gateway in this process with the ``upper`` demo adapter registered, on a SQLite registry in
    ``tmp_path`` (or the database at ``database_url``, migrated here)."""
    db = DatabaseSettings(home=tmp_path, database_url=database_url)
    upgrade(db.url())
    settings = GatewaySettings(
        admin_key=SecretStr(ADMIN),
        queue=QueueSettings(redis_url=redis_url),
        db=db,
        adapter_roots=[str(DEMO_DIR), str(tmp_path / "adapters"), *extra_roots],
        **limits,  # type: ignore[arg-type]
    )
    redis.Redis.from_url(redis_url).flushdb()
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        resp = client.post("/v1/adapters", json={"name": "upper", "uri": str(adapter_dir("upper"))})
        assert resp.status_code == 201, resp.text
        yield client


@pytest.fixture
def gateway(tmp_path: Path, redis_url: str) -> Iterator[TestClient]:
    with make_gateway(tmp_path, redis_url, max_prompt_chars=100, max_tokens_limit=128) as client:
        yield client


def counts(client: TestClient) -> tuple[int, int, int]:
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    with sessions() as s:
        jobs = s.scalar(select(func.count()).select_from(Job))
        versions = s.scalar(select(func.count()).select_from(AdapterVersion))
    queued = redis.Redis.from_url(client.app.state.settings.queue.redis_url).llen("lora.upper")  # type: ignore[attr-defined]
    return jobs, versions, queued


GOOD = {"adapter": "upper", "prompt": "hello", "max_tokens": 16}


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, {**GOOD, "adapter": "nope"}, 404, "adapter_not_found"),
        ({"Authorization": ""}, GOOD, 401, "missing_api_key"),
        ({"Authorization": "Bearer wrong"}, GOOD, 401, "invalid_api_key"),
        ({}, {**GOOD, "prompt": ""}, 422, "invalid_request"),
        ({}, {**GOOD, "prompt": "   "}, 400, "prompt_empty"),
        ({}, {**GOOD, "prompt": "x" * 101}, 413, "prompt_too_long"),
        ({}, {**GOOD, "max_tokens": 0}, 422, "invalid_request"),
        ({}, {**GOOD, "max_tokens": 129}, 400, "max_tokens_out_of_range"),
        ({}, {**GOOD, "temperature": -1}, 422, "invalid_request"),
        ({}, {**GOOD, "adapter": "../etc"}, 422, "invalid_request"),
        ({}, {**GOOD, "unknown_field": 1}, 422, "invalid_request"),
    ],
)
def test_bad_job_is_refused_with_code_and_records_nothing(
    gateway: TestClient, headers: dict[str, str], body: dict[str, object], status: int, code: str
) -> None:
    before = counts(gateway)
    resp = gateway.post("/v1/jobs", json=body, headers=headers)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert counts(gateway) == before


def test_good_job_is_recorded_and_published_once(gateway: TestClient) -> None:
    before = counts(gateway)
    resp = gateway.post("/v1/jobs", json=GOOD)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued"
    assert counts(gateway) == (before[0] + 1, before[1], before[2] + 1)


def test_idempotent_retry_returns_the_first_job_and_publishes_nothing(gateway: TestClient) -> None:
    first = gateway.post("/v1/jobs", json={**GOOD, "idempotency_key": "k1"}).json()
    before = counts(gateway)
    again = gateway.post("/v1/jobs", json={**GOOD, "idempotency_key": "k1"}).json()
    assert again["id"] == first["id"]
    assert counts(gateway) == before


def test_oversized_body_is_refused_before_parsing(gateway: TestClient) -> None:
    resp = gateway.post(
        "/v1/jobs", content=b"{" + b" " * (2 << 20) + b"}", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        (str(adapter_dir("nonexistent")), "adapter_not_found"),
        ("/nonexistent/adapter", "adapter_uri_outside_roots"),
        (str(DEMO_ADAPTERS / ".." / ".." / ".."), "adapter_uri_outside_roots"),
        (str(DEMO_BASE), "adapter_config_missing"),
        ("s3://bucket/adapter", "adapter_uri_outside_roots"),  # no store root configured
    ],
)
def test_adapter_that_is_not_a_peft_lora_of_this_base_is_refused(gateway: TestClient, uri: str, code: str) -> None:
    before = counts(gateway)
    resp = gateway.post("/v1/adapters", json={"name": "bad", "uri": uri})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == code
    assert counts(gateway) == before


def test_adapter_registration_needs_the_admin_key(gateway: TestClient) -> None:
    key = gateway.post("/v1/admin/keys", json={"tenant": "acme"}).json()["key"]
    resp = gateway.post(
        "/v1/adapters",
        json={"name": "x", "uri": str(adapter_dir("upper"))},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "admin_required"


def test_tenant_cannot_read_another_tenants_job(gateway: TestClient) -> None:
    job = gateway.post("/v1/jobs", json=GOOD).json()
    key = gateway.post("/v1/admin/keys", json={"tenant": "acme"}).json()["key"]
    resp = gateway.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "job_not_found"
    assert gateway.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_unknown_route_is_json_not_html(gateway: TestClient) -> None:
    resp = gateway.get("/v1/nothing")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "route_not_found"


def test_chunked_body_over_the_limit_is_refused(tmp_path: Path, redis_url: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"adapter": "upper", "prompt": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    with make_gateway(tmp_path, redis_url, max_body_bytes=1024) as client:
        before = counts(client)
        resp = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "request_too_large"
        assert counts(client) == before


def test_jobs_that_cannot_fit_the_model_context_are_refused(tmp_path: Path, redis_url: str) -> None:
    # The demo base has 256 positions; a prompt of n bytes is n + 2 tokens (<s> ... <sep>).
    with make_gateway(tmp_path, redis_url, max_prompt_chars=10_000, max_tokens_limit=4096) as client:
        before = counts(client)
        too_many = client.post("/v1/jobs", json={**GOOD, "max_tokens": 256})
        assert (too_many.status_code, too_many.json()["error"]["code"]) == (400, "max_tokens_out_of_range")
        overflow = client.post("/v1/jobs", json={**GOOD, "prompt": "y" * 200, "max_tokens": 64})
        assert (overflow.status_code, overflow.json()["error"]["code"]) == (400, "context_length_exceeded")
        assert counts(client) == before
        fits = client.post("/v1/jobs", json={**GOOD, "prompt": "y" * 190, "max_tokens": 64})
        assert fits.status_code == 202


def test_nul_characters_are_refused(gateway: TestClient) -> None:
    for body in ({**GOOD, "prompt": "a\x00b"}, {**GOOD, "routing_key": "k\x00"}, {**GOOD, "stop": ["\x00"]}):
        resp = gateway.post("/v1/jobs", json=body)
        assert resp.status_code == 422
        assert resp.json()["error"]["code"] == "invalid_request"


def test_adapter_paths_are_shown_to_admins_only(gateway: TestClient) -> None:
    key = gateway.post("/v1/admin/keys", json={"tenant": "acme"}).json()["key"]
    tenant_view = gateway.get("/v1/adapters", headers={"Authorization": f"Bearer {key}"}).json()
    admin_view = gateway.get("/v1/adapters").json()
    assert tenant_view[0]["versions"][0]["uri"] is None
    assert admin_view[0]["versions"][0]["uri"].startswith("file://")


def test_a_key_for_a_tenant_named_admin_is_not_an_admin_key(gateway: TestClient) -> None:
    key = gateway.post("/v1/admin/keys", json={"tenant": "admin"}).json()["key"]
    resp = gateway.post(
        "/v1/adapters",
        json={"name": "x", "uri": str(adapter_dir("upper"))},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status_code == 403


def test_cancel_a_queued_job_is_idempotent_scoped_and_signals_workers(gateway: TestClient) -> None:
    job = gateway.post("/v1/jobs", json=GOOD).json()
    key = gateway.post("/v1/admin/keys", json={"tenant": "acme"}).json()["key"]
    other = gateway.delete(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"})
    assert other.status_code == 404
    first = gateway.delete(f"/v1/jobs/{job['id']}")
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    assert gateway.delete(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    flag = redis.Redis.from_url(gateway.app.state.settings.queue.redis_url).get(f"loraq:cancel:{job['id']}")  # type: ignore[attr-defined]
    assert flag == b"1"


def test_a_finished_job_cannot_be_cancelled(gateway: TestClient) -> None:
    from datetime import UTC, datetime

    from registry import jobs
    from registry.db import transaction
    from registry.schemas import FinishReason, GenerationResult

    job = gateway.post("/v1/jobs", json=GOOD).json()
    done = jobs.Outcome(
        job_id=job["id"],
        worker="w",
        queue_wait_s=0,
        run_time_s=0,
        finished_at=datetime.now(UTC),
        result=GenerationResult(text="HELLO", finish_reason=FinishReason.STOP, prompt_tokens=7, completion_tokens=5),
    )
    with transaction(gateway.app.state.sessions) as session:  # type: ignore[attr-defined]
        jobs.record(session, [done])
    resp = gateway.delete(f"/v1/jobs/{job['id']}")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "job_not_cancellable"
    assert gateway.get(f"/v1/jobs/{job['id']}").json()["result"]["text"] == "HELLO"


def test_a_symlink_out_of_the_adapter_roots_is_refused_before_anything_is_read(
    gateway: TestClient, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (outside / name).write_bytes((adapter_dir("upper") / name).read_bytes())
    roots = tmp_path / "adapters"
    roots.mkdir()
    (roots / "linked-dir").symlink_to(outside, target_is_directory=True)
    mixed = roots / "linked-file"
    mixed.mkdir()
    (mixed / "adapter_config.json").write_bytes((outside / "adapter_config.json").read_bytes())
    (mixed / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
    before = counts(gateway)
    for path in (roots / "linked-dir", mixed):
        resp = gateway.post("/v1/adapters", json={"name": "sneaky", "uri": str(path)})
        assert (resp.status_code, resp.json()["error"]["code"]) == (400, "adapter_uri_outside_roots"), resp.text
    assert counts(gateway) == before
    ok = roots / "inside"
    ok.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (ok / name).write_bytes((outside / name).read_bytes())
    assert gateway.post("/v1/adapters", json={"name": "fine", "uri": str(ok)}).status_code == 201
