"""The one message builder and publisher: what every path puts on a queue, read back from Redis."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import redis

from gateway.settings import GatewaySettings
from registry.schemas import Priority, SamplingParams, TaskJob
from workers.app import create_worker_app
from workers.contract.broker import message_ids
from workers.contract.celery_app import Role, make_celery
from workers.contract.messages import Publisher, chunk_message, fail_fast_publisher
from workers.contract.names import queue_name
from workers.contract.settings import QueueSettings
from workers.settings import WorkerSettings
from workers.tasks import requeue_retries

SECRET = "the customer's secret prompt"


def task(job_id: str, adapter: str = "upper") -> TaskJob:
    return TaskJob(
        job_id=job_id,
        adapter=adapter,
        version_id=1,
        version=3,
        uri="file:///x",
        sha256="0" * 64,
        prompt=SECRET,
        sampling=SamplingParams(),
        enqueued_at=1000.0,
    )


def raw_messages(client: redis.Redis, adapter: str) -> list[dict[str, object]]:
    keys = client.keys(queue_name(adapter) + "*")
    return [json.loads(m) for key in keys for m in client.lrange(key, 0, -1)]


def headers_text(message: dict[str, object]) -> str:
    return json.dumps(message["headers"])


def body_text(message: dict[str, object]) -> str:
    return base64.b64decode(str(message["body"])).decode()


def test_a_job_message_names_its_job_but_never_shows_the_prompt_in_its_headers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    fail_fast_publisher(QueueSettings(redis_url=redis_url)).publish(task("j1"), priority=Priority.INTERACTIVE)

    [message] = raw_messages(client, "upper")
    assert message_ids(json.dumps(message)) == ["j1"]
    assert SECRET not in headers_text(message)
    assert json.loads(headers_text(message))["argsrepr"] == "[job of upper v3]"
    assert SECRET in body_text(message)  # the worker needs it; only events and Flower must not show it


def test_a_job_requeued_by_a_worker_for_retry_is_the_gateways_message(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    worker_side = Publisher(make_celery(QueueSettings(redis_url=redis_url), role=Role.WORKER), fail_fast=False)

    counts = requeue_retries(worker_side, [task("r1"), task("ok")], ["retry", "succeeded"])

    assert counts == {"jobs": 2, "statuses": {"retry": 1, "succeeded": 1}}
    [message] = raw_messages(client, "upper")
    assert message_ids(json.dumps(message)) == ["r1"]
    assert SECRET not in headers_text(message)
    assert json.loads(headers_text(message))["argsrepr"] == "[job of upper v3]"


def test_a_chunk_carries_its_job_ids_in_a_header_and_refuses_mixed_adapters() -> None:
    payloads = [task("a").model_dump(mode="json"), task("b").model_dump(mode="json")]
    message = chunk_message("chunk-1", payloads, priority=Priority.BULK)
    assert message.headers == {"loraq_jobs": ["a", "b"]}
    assert message.argsrepr == "[2 jobs of upper]" and message.queue == "lora.upper"
    with pytest.raises(ValueError, match="one adapter"):
        chunk_message(
            "chunk-2", [*payloads, task("c", adapter="rot13").model_dump(mode="json")], priority=Priority.BULK
        )


def test_gateway_and_worker_build_their_celery_apps_with_the_same_visibility_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAQ_HOME", str(tmp_path))
    monkeypatch.setenv("LORAQ_VISIBILITY_TIMEOUT_S", "37")
    monkeypatch.setenv("LORAQ_BULK_CHUNK_JOBS", "9")
    gateway, worker = GatewaySettings(), WorkerSettings()
    assert gateway.queue == worker.queue  # one set of variables, read the same way by both
    publisher = fail_fast_publisher(gateway.queue)
    worker_app = create_worker_app(worker)
    apps = [publisher.app, publisher.bulk_app, worker_app]
    timeouts = {app.conf.broker_transport_options["visibility_timeout"] for app in apps}
    assert timeouts == {37}
    assert worker.queue.bulk_chunk_jobs == gateway.queue.bulk_chunk_jobs == 9


def test_the_gateway_publisher_fails_fast_and_the_worker_app_reads_results(redis_url: str) -> None:
    settings = QueueSettings(redis_url=redis_url)
    publisher = fail_fast_publisher(settings)
    assert publisher.app.conf.broker_transport_options["max_retries"] == 0
    assert publisher.app.conf.result_backend == "disabled"
    assert publisher.bulk_app.conf.task_send_sent_event is False
    assert make_celery(settings, role=Role.WORKER).conf.result_backend == redis_url


def test_every_publish_marks_its_adapter_in_the_backlog_index_with_its_oldest_job(redis_url: str) -> None:
    from workers.contract import backlog

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    publisher = fail_fast_publisher(QueueSettings(redis_url=redis_url))
    publisher.publish(task("j1", adapter="upper"), priority=Priority.INTERACTIVE)
    late, early = task("c1", adapter="rot13"), task("c2", adapter="rot13")
    late.enqueued_at, early.enqueued_at = 900.0, 800.0
    publisher.publish_chunks(
        [("chunk-1", [late.model_dump(mode="json")]), ("chunk-2", [early.model_dump(mode="json")])],
        priority=Priority.BULK,
    )
    assert backlog.waiting(client, limit=10) == [("rot13", 800.0), ("upper", 1000.0)]
