"""Webhook delivery through a live gateway app to real loopback receivers: signed as Standard Webhooks
say, retried after failures with the same event id, a hanging receiver delays nobody else, and a
private target is refused without the allow-list."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from standardwebhooks.webhooks import Webhook

from gateway.cli_status import render
from tests.gateway.test_bad_input import make_gateway
from tests.gateway.test_batch_api import jsonl, upload
from tests.gateway.webhooks.receiver import receiver

FAST = {"webhook_allow": ["127.0.0.0/8"], "webhook_retry_base_s": 0.05, "webhook_timeout_s": 1}


@pytest.fixture
def gateway(tmp_path: Path, redis_url: str) -> Iterator[TestClient]:
    with make_gateway(tmp_path, redis_url, **FAST) as client:  # type: ignore[arg-type]
        yield client


def deliveries(client: TestClient, **params: object) -> list[dict[str, object]]:
    resp = client.get("/v1/webhooks/deliveries", params=params)
    assert resp.status_code == 200, resp.text
    out: list[dict[str, object]] = resp.json()
    return out


def wait_status(client: TestClient, status: str, count: int, timeout: float = 10.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = deliveries(client, status=status)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} {status} deliveries not seen: {deliveries(client)}")


def test_a_test_event_arrives_signed_and_verifies_with_a_standard_webhooks_library(gateway: TestClient) -> None:
    secret = gateway.post("/v1/webhooks/secret").json()["secret"]
    with receiver() as hook:
        endpoint = gateway.post("/v1/webhooks/endpoints", json={"url": hook.url})
        assert endpoint.status_code == 201, endpoint.text
        assert gateway.post("/v1/webhooks/test", json={}).status_code == 202
        (got,) = hook.wait_for(1)
    event = Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "webhook.test" and event["object"] == "event"
    assert got.headers["webhook-id"] == event["id"]
    (done,) = wait_status(gateway, "delivered", 1)
    assert done["id"] == event["id"] and done["attempts"] == 1 and done["last_status"] == 200


def test_a_receiver_that_fails_twice_gets_the_same_event_three_times_and_it_is_delivered(gateway: TestClient) -> None:
    gateway.post("/v1/webhooks/secret")
    with receiver(answers=[500, 503]) as hook:
        gateway.post("/v1/webhooks/test", json={"url": hook.url})
        got = hook.wait_for(3)
        (done,) = wait_status(gateway, "delivered", 1)
    assert len(got) == 3
    assert len({g.headers["webhook-id"] for g in got}) == 1  # a receiver drops duplicates by this id
    assert len({g.body for g in got}) == 1  # the same body each time; only the timestamp and signature move
    assert done["attempts"] == 3


def test_a_refusing_receiver_is_not_retried(gateway: TestClient) -> None:
    gateway.post("/v1/webhooks/secret")
    with receiver(answers=[410]) as hook:
        gateway.post("/v1/webhooks/test", json={"url": hook.url})
        (failed,) = wait_status(gateway, "failed", 1)
        time.sleep(0.3)
        assert len(hook.got) == 1
    assert failed["last_status"] == 410 and failed["attempts"] == 1
    status = gateway.get("/v1/admin/status").json()
    assert status["webhooks"] == {"pending": 0, "failed": 1}  # what `loraq status` shows operators
    console = Console(width=200, record=True)
    console.print(render(status))
    assert "webhooks: 0 pending, 1 failed" in console.export_text()


def test_a_receiver_that_never_answers_does_not_delay_the_others(gateway: TestClient) -> None:
    gateway.post("/v1/webhooks/secret")
    with receiver(hang_s=5) as slow, receiver() as fast:
        started = time.monotonic()
        for _ in range(3):
            gateway.post("/v1/webhooks/test", json={"url": slow.url})
        gateway.post("/v1/webhooks/test", json={"url": fast.url})
        (got,) = fast.wait_for(1, timeout=5)
        assert got.at - started < 1.0  # not behind the slow receiver's one-second timeouts
    assert not any(d["status"] == "delivered" and d["url"] == slow.url for d in deliveries(gateway))


def test_a_private_target_is_refused_without_the_allow_list(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        client.post("/v1/webhooks/secret")
        for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "http://10.0.0.1/"):
            resp = client.post("/v1/webhooks/endpoints", json={"url": url})
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["code"] == "webhook_target_refused"


def test_an_endpoint_needs_a_secret_first_and_known_event_types(gateway: TestClient) -> None:
    resp = gateway.post("/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/h"})
    assert (resp.status_code, resp.json()["error"]["code"]) == (409, "webhook_secret_missing")
    gateway.post("/v1/webhooks/secret")
    resp = gateway.post("/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/h", "event_types": ["job.done"]})
    assert (resp.status_code, resp.json()["error"]["code"]) == (400, "webhook_event_type_unknown")
    made = gateway.post("/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/h", "event_types": ["job.failed"]})
    assert made.status_code == 201
    assert [e["id"] for e in gateway.get("/v1/webhooks/endpoints").json()] == [made.json()["id"]]
    assert gateway.delete(f"/v1/webhooks/endpoints/{made.json()['id']}").status_code == 204
    assert gateway.get("/v1/webhooks/endpoints").json() == []


def test_a_cancelled_batch_sends_its_end_event_to_its_own_receiver(gateway: TestClient) -> None:
    secret = gateway.post("/v1/webhooks/secret").json()["secret"]
    file_id = upload(gateway, jsonl(3))
    with receiver() as hook:
        batch = gateway.post(
            "/v1/batches",
            json={"input_file_id": file_id, "endpoint": "/v1/completions", "metadata": {"webhook_url": hook.url}},
        )
        assert batch.status_code == 200, batch.text
        assert gateway.post(f"/v1/batches/{batch.json()['id']}/cancel").status_code == 200
        (got,) = hook.wait_for(1, timeout=15)
    event = Webhook(secret).verify(got.body, got.headers)
    assert (event["type"], event["data"]["id"], event["data"]["status"]) == (
        "batch.cancelled",
        batch.json()["id"],
        "cancelled",
    )


def test_a_batch_naming_a_private_receiver_is_refused(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        client.post("/v1/webhooks/secret")
        file_id = upload(client, jsonl(1))
        meta = {"webhook_url": "http://127.0.0.1:9/hook"}
        resp = client.post(
            "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions", "metadata": meta}
        )
        assert (resp.status_code, resp.json()["error"]["code"]) == (400, "webhook_target_refused")


def test_a_job_sends_its_end_event_to_its_own_receiver_and_to_subscribed_endpoints(gateway: TestClient) -> None:
    secret = gateway.post("/v1/webhooks/secret").json()["secret"]
    with receiver() as own, receiver() as endpoint, receiver() as other_types:
        gateway.post("/v1/webhooks/endpoints", json={"url": endpoint.url, "event_types": ["job.cancelled"]})
        gateway.post("/v1/webhooks/endpoints", json={"url": other_types.url, "event_types": ["batch.completed"]})
        job = gateway.post(
            "/v1/jobs", json={"adapter": "upper", "prompt": "x", "max_tokens": 4, "webhook_url": own.url}
        )
        assert job.status_code == 202, job.text
        assert gateway.delete(f"/v1/jobs/{job.json()['id']}").status_code == 200
        (mine,) = own.wait_for(1)
        (theirs,) = endpoint.wait_for(1)
        time.sleep(0.3)
        assert other_types.got == []
    for got in (mine, theirs):
        event = Webhook(secret).verify(got.body, got.headers)
        assert (event["type"], event["data"]["id"]) == ("job.cancelled", job.json()["id"])
    assert mine.headers["webhook-id"] != theirs.headers["webhook-id"]  # one delivery (and id) per receiver


def test_a_job_naming_a_receiver_without_a_secret_is_refused_before_it_is_queued(gateway: TestClient) -> None:
    resp = gateway.post("/v1/jobs", json={"adapter": "upper", "prompt": "x", "webhook_url": "http://127.0.0.1:9/h"})
    assert (resp.status_code, resp.json()["error"]["code"]) == (409, "webhook_secret_missing")
