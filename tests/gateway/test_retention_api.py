"""Retention over HTTP, on each database: what the purge deleted reads 404 ``job_expired`` /
``file_expired`` (never a 500 or an empty answer), a batch's ``output_expires_after`` is OpenAI's
shape, and the purge runs at most once a minute."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from registry.jobs import new_job_id
from registry.models import utcnow
from registry.openai_schemas import COMPLETIONS
from tests.gateway.test_bad_input import make_gateway
from tests.gateway.test_batch_api import code, jsonl, upload

DAY = timedelta(days=1)


def purge_at(client: TestClient, delay: timedelta) -> None:
    """One pass of the app's purge as if it ran ``delay`` from now."""
    client.app.state.purger.purge.run(utcnow() + delay)  # type: ignore[attr-defined]


def batch_until(client: TestClient, batch_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (batch := client.get(f"/v1/batches/{batch_id}").json())["status"] != status:
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
    return dict(batch)


def test_a_purged_job_reads_404_job_expired_and_an_unknown_one_job_not_found(
    tmp_path: Path, redis_url: str, empty_db_url: str
) -> None:
    with make_gateway(tmp_path, redis_url, database_url=empty_db_url, retention_days=30) as client:
        job = client.post("/v1/jobs", json={"adapter": "upper", "prompt": "hi", "max_tokens": 4}).json()
        assert client.delete(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
        purge_at(client, 29 * DAY)
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 200  # within the retention

        purge_at(client, 31 * DAY)

        assert code(client.get(f"/v1/jobs/{job['id']}")) == (404, "job_expired")
        assert code(client.get(f"/v1/jobs/{job['id']}", params={"wait": 1})) == (404, "job_expired")
        assert code(client.get(f"/v1/jobs/{new_job_id()}")) == (404, "job_not_found")
        assert code(client.delete(f"/v1/jobs/{job['id']}")) == (404, "job_expired")


def test_a_batchs_output_expires_after_its_seconds_and_reads_404_file_expired(
    tmp_path: Path, redis_url: str, empty_db_url: str
) -> None:
    with make_gateway(tmp_path, redis_url, database_url=empty_db_url) as client:
        file_id = upload(client, jsonl(3))
        body = {
            "input_file_id": file_id,
            "endpoint": COMPLETIONS,
            "output_expires_after": {"anchor": "created_at", "seconds": 3600},
        }
        batch = client.post("/v1/batches", json=body).json()
        batch_until(client, batch["id"], "in_progress")
        deadline = time.monotonic() + 30
        while client.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["total"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.post(f"/v1/batches/{batch['id']}/cancel")
        ended = batch_until(client, batch["id"], "cancelled")
        error_file = ended["error_file_id"]
        assert client.get(f"/v1/files/{error_file}/content").status_code == 200
        shown = client.get(f"/v1/files/{error_file}").json()
        assert 3600 <= shown["expires_at"] - shown["created_at"] <= 3602  # OpenAI's field, from the batch's expiry
        assert client.get(f"/v1/files/{file_id}").json()["expires_at"] is None
        purge_at(client, timedelta(minutes=59))
        assert client.get(f"/v1/files/{error_file}").status_code == 200

        purge_at(client, timedelta(minutes=61))

        assert code(client.get(f"/v1/files/{error_file}")) == (404, "file_expired")
        assert code(client.get(f"/v1/files/{error_file}/content")) == (404, "file_expired")
        assert client.get(f"/v1/batches/{batch['id']}").json()["error_file_id"] == error_file  # the batch stays
        assert client.get(f"/v1/files/{file_id}").status_code == 200  # its input has no such expiry
        assert error_file not in {f["id"] for f in client.get("/v1/files").json()["data"]}


@pytest.mark.parametrize(
    "expiry",
    [{"anchor": "created_at", "seconds": 60}, {"anchor": "created_at", "seconds": 2_592_001}, {"anchor": "x"}],
)
def test_an_output_expiry_outside_openais_range_is_refused(
    tmp_path: Path, redis_url: str, expiry: dict[str, Any]
) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        body = {"input_file_id": upload(client, jsonl(1)), "endpoint": COMPLETIONS, "output_expires_after": expiry}
        assert code(client.post("/v1/batches", json=body)) == (422, "invalid_request")


def test_the_purge_runs_at_most_once_a_minute_and_keeps_everything_by_default() -> None:
    assert GatewaySettings().retention().keep is None
    assert GatewaySettings(retention_days=7).retention().keep == 7 * DAY
    with pytest.raises(ValidationError):
        GatewaySettings(purge_interval_s=5)
    with pytest.raises(ValidationError):
        GatewaySettings(retention_days=0)
