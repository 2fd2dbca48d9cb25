"""The Batch API's HTTP surface on a real Redis and database: errors by code, tenant scoping,
and a resumed ingest publishing what a dead gateway recorded but never sent."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from registry import batches
from registry.adapters import Resolver
from registry.batch_lines import BatchLine, job_id_for, parse_line
from registry.db import engine_from_settings, session_factory
from registry.models import BatchRow, Tenant
from registry.openai_schemas import COMPLETIONS
from tests.gateway.test_bad_input import make_gateway
from workers.contract.broker import message_ids


def jsonl(n: int) -> bytes:
    body = {"model": "upper", "prompt": "hi", "max_tokens": 8}
    return b"".join(
        orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": COMPLETIONS, "body": body}) + b"\n"
        for i in range(n)
    )


def upload(client: TestClient, data: bytes, **headers: str) -> str:
    resp = client.post(
        "/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}, headers=headers or None
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def code(resp: object) -> tuple[int, str]:
    return resp.status_code, resp.json()["error"]["code"]  # type: ignore[attr-defined]


def test_batch_api_errors_have_codes_and_other_tenants_see_nothing(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url, max_file_bytes=4096) as client:
        assert code(client.post("/v1/files", files={"file": ("x", b"x" * 5000)}, data={"purpose": "batch"})) == (
            413,
            "request_too_large",
        )
        assert code(client.post("/v1/files", files={"file": ("x", b"{}")}, data={"purpose": "fine-tune"})) == (
            400,
            "invalid_purpose",
        )
        file_id = upload(client, jsonl(3))
        assert code(client.post("/v1/batches", json={"input_file_id": "file-nope", "endpoint": COMPLETIONS})) == (
            404,
            "file_not_found",
        )
        assert code(client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/embeddings"})) == (
            400,
            "invalid_endpoint",
        )
        bad_window = {"input_file_id": file_id, "endpoint": COMPLETIONS, "completion_window": "2d"}
        assert code(client.post("/v1/batches", json=bad_window)) == (400, "invalid_completion_window")
        batch = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": COMPLETIONS}).json()
        assert batch["object"] == "batch" and batch["status"] == "validating"

        other = {"Authorization": f"Bearer {client.post('/v1/admin/keys', json={'tenant': 'globex'}).json()['key']}"}
        assert code(client.get(f"/v1/batches/{batch['id']}", headers=other)) == (404, "batch_not_found")
        assert code(client.post(f"/v1/batches/{batch['id']}/cancel", headers=other)) == (404, "batch_not_found")
        assert code(client.get(f"/v1/files/{file_id}/content", headers=other)) == (404, "file_not_found")
        assert client.get("/v1/batches", headers=other).json()["data"] == []
        assert code(
            client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": COMPLETIONS}, headers=other)
        ) == (
            404,
            "file_not_found",
        )


def test_batches_list_pages_newest_first(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        file_id = upload(client, jsonl(1))
        ids = [
            client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": COMPLETIONS}).json()["id"]
            for _ in range(3)
        ]
        first = client.get("/v1/batches", params={"limit": 2}).json()
        assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
        rest = client.get("/v1/batches", params={"limit": 2, "after": first["last_id"]}).json()
        assert [b["id"] for b in rest["data"]] == [ids[0]] and not rest["has_more"]


def test_a_resumed_ingest_publishes_what_a_dead_gateway_recorded_but_never_sent(tmp_path: Path, redis_url: str) -> None:
    data = jsonl(6)
    with make_gateway(tmp_path, redis_url, batch_poll_s=3600) as client:  # the loop acts only when woken
        file_id = upload(client, data)
        app = client.app
        sessions = session_factory(engine_from_settings(app.state.settings.db))  # type: ignore[attr-defined]
        with sessions() as s, s.begin():
            tenant = s.query(Tenant).filter_by(name="_admin").one()
            row = batches.create(
                s, tenant=tenant, input_file_id=file_id, endpoint=COMPLETIONS, completion_window="24h", metadata=None
            )
            batch_id = row.id
        dead_gateway_records_the_first_lines(sessions, batch_id, data, lines=4)

        app.state.batches.wake()  # type: ignore[attr-defined]
        ingested = wait_until_ingested(sessions, batch_id)
        assert (ingested.total, ingested.published_lines, ingested.ingested_lines) == (6, 6, 6)
        client_redis = redis.Redis.from_url(redis_url)
        queued = {
            i for k in client_redis.keys("lora.upper*") for m in client_redis.lrange(k, 0, -1) for i in message_ids(m)
        }
        assert {job_id_for(batch_id, n) for n in range(6)} <= queued  # the 4 recorded ones too


def dead_gateway_records_the_first_lines(
    sessions: sessionmaker[Session], batch_id: str, data: bytes, *, lines: int
) -> None:
    """What a gateway killed between commit and publish leaves: rows recorded, offset moved, nothing in Redis,
    and a lease that has run out."""
    raw = data.splitlines(keepends=True)[:lines]
    with sessions() as session, session.begin():
        held = batches.claim(session, batch_id=batch_id, owner="gw-dead", lease_s=-1)
        assert held is not None
        tenant = session.get(Tenant, held.tenant_id)
        assert tenant is not None
        resolve = Resolver(session, tenant=tenant)
        parsed = [parse_line(r, batch_id=batch_id, line_no=i, endpoint=COMPLETIONS) for i, r in enumerate(raw)]
        good = [(p, resolve(p.job.adapter, p.job_id)) for p in parsed if isinstance(p, BatchLine)]
        chunk = batches.Chunk(0, sum(map(len, raw)), lines, False, good, [])
        batches.commit_chunk(session, batch=held, owner="gw-dead", lease_s=-1, chunk=chunk)


def wait_until_ingested(sessions: sessionmaker[Session], batch_id: str) -> BatchRow:
    deadline = time.monotonic() + 30
    while True:
        with sessions() as s:
            row = s.get(BatchRow, batch_id)
        assert row is not None
        if row.ingest_done and row.published_lines == row.ingested_lines:
            return row
        assert time.monotonic() < deadline, (row.ingested_lines, row.published_lines)
        time.sleep(0.05)
