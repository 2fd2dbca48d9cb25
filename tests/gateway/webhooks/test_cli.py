"""``loraq webhooks`` against a live gateway app (in-process): secret, add, list, test, deliveries, remove."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

from gateway import cli_client
from gateway.cli import app
from tests.gateway.test_bad_input import make_gateway
from tests.gateway.webhooks.receiver import receiver

runner = CliRunner()


@pytest.fixture
def gateway(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with make_gateway(tmp_path, redis_url, webhook_allow=["127.0.0.0/8"]) as http:  # type: ignore[arg-type]

        def in_process() -> cli_client.Client:
            c = cli_client.Client("http://testserver", None)
            c.http = http
            return c

        monkeypatch.setattr(cli_client, "client", in_process)
        monkeypatch.setattr("gateway.cli_webhooks.client", in_process)
        monkeypatch.setattr("gateway.cli_webhooks.console", Console(width=300))  # tables unwrapped
        yield http


def loraq(*args: str) -> str:
    result = runner.invoke(app, ["webhooks", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_tenant_sets_up_a_receiver_tests_it_and_sees_the_delivery(gateway: TestClient) -> None:
    assert loraq("secret").strip().splitlines()[0].startswith("whsec_")
    with receiver() as hook:
        endpoint_id = loraq("add", hook.url, "--event", "job.failed").strip()
        assert endpoint_id in loraq("list")
        loraq("test")
        hook.wait_for(1)
        deadline = time.monotonic() + 5
        while "delivered" not in (out := loraq("deliveries")) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "webhook.test" in out and "delivered" in out
    loraq("remove", endpoint_id)
    assert endpoint_id not in loraq("list")


def test_a_refused_target_is_an_error_with_its_code(gateway: TestClient) -> None:
    loraq("secret")
    result = runner.invoke(app, ["webhooks", "add", "ftp://example.com/x"])
    assert result.exit_code == 1 and "webhook_target_refused" in result.output
