"""The operator's view of a live stack: /metrics of gateway and worker agree with the registry,
``loraq status`` shows the queues and resident adapters, ``loraq usage`` sums the job rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from registry.db import make_engine, session_factory
from registry.models import Adapter, Job
from tests.fixtures.stack import RunningStack
from workers.demo_model import adapter_dir

pytestmark = [pytest.mark.e2e]

LORAQ = str(Path(sys.executable).parent / "loraq")
ADAPTER = "ops-upper"


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric ``name`` (counters: their ``_total`` sample)."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (name, f"{name}_total"):
                out.append((dict(sample.labels), float(sample.value)))
    return out


def loraq(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    env.update(LORAQ_URL=stack.url, LORAQ_HOME=str(stack.home), LORAQ_ADMIN_KEY=stack.admin_key, COLUMNS="200")
    return subprocess.run([LORAQ, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ran(loraq_stack: RunningStack) -> dict[str, int]:
    """Ten jobs on an adapter of this module's own, all ended; returns the registry's counts and token sums."""
    with loraq_stack.client() as http:
        assert http.post("/v1/adapters", json={"name": ADAPTER, "uri": str(adapter_dir("upper"))}).is_success
        ids = [
            http.post("/v1/jobs", json={"adapter": ADAPTER, "prompt": f"metric {i}", "max_tokens": 24}).json()["id"]
            for i in range(10)
        ]
        for job_id in ids:
            assert http.get(f"/v1/jobs/{job_id}", params={"wait": 60}).json()["status"] == "succeeded"
    engine = make_engine(f"sqlite:///{loraq_stack.home / 'loraq.db'}")
    with session_factory(engine)() as s:
        where = (Adapter.name == ADAPTER, Job.status == "succeeded")
        count, prompt, completion = s.execute(
            select(func.count(), func.sum(Job.prompt_tokens), func.sum(Job.completion_tokens))
            .join(Adapter, Adapter.id == Job.adapter_id)
            .where(*where)
        ).one()
    engine.dispose()
    return {"succeeded": count, "prompt_tokens": prompt, "completion_tokens": completion}


def test_gateway_and_worker_metrics_parse_and_agree_with_the_registry(
    loraq_stack: RunningStack, ran: dict[str, int]
) -> None:
    gateway = httpx.get(f"{loraq_stack.url}/metrics", timeout=10).text
    jobs = [
        v
        for labels, v in samples(gateway, "loraq_jobs")
        if labels["adapter"] == ADAPTER and labels["status"] == "succeeded"
    ]
    assert sum(jobs) == ran["succeeded"] == 10
    assert ({"dependency": "database"}, 1.0) in samples(gateway, "loraq_up")
    assert ({"dependency": "redis"}, 1.0) in samples(gateway, "loraq_up")
    assert samples(gateway, "loraq_workers") == [({}, 1.0)]
    # Queues are listed while they have work (the backlog index); the worker drops a drained one
    # from the index at its next plan tick.
    deadline = time.monotonic() + 10
    while samples(gateway, "loraq_backlog_queues") != [({}, 0.0)] and time.monotonic() < deadline:
        time.sleep(0.2)
        gateway = httpx.get(f"{loraq_stack.url}/metrics", timeout=10).text
    assert samples(gateway, "loraq_backlog_queues") == [({}, 0.0)]
    assert samples(gateway, "loraq_queue_messages") == []
    routes = {labels["route"] for labels, _ in samples(gateway, "loraq_http_requests")}
    assert "/v1/jobs/{job_id}" in routes  # templates, never job ids
    assert not any(len(r) > 40 and "-" in r.rsplit("/", 1)[-1] for r in routes)

    worker = httpx.get(f"http://127.0.0.1:{loraq_stack.metrics_port}/metrics", timeout=10).text
    done = [
        v
        for labels, v in samples(worker, "loraq_worker_jobs")
        if labels["adapter"] == ADAPTER and labels["status"] == "succeeded"
    ]
    assert sum(done) == ran["succeeded"]
    tokens = [v for labels, v in samples(worker, "loraq_worker_completion_tokens") if labels["adapter"] == ADAPTER]
    assert sum(tokens) == ran["completion_tokens"]
    assert sum(v for _, v in samples(worker, "loraq_worker_batches")) >= 1
    assert any(labels.get("tier") == "slot" and v >= 1 for labels, v in samples(worker, "loraq_worker_adapter_loads"))
    budget = dict((labels["part"], v) for labels, v in samples(worker, "loraq_worker_memory_budget_bytes"))
    assert budget["budget"] > budget["weights"] > 0
    assert sum(v for _, v in samples(worker, "process_resident_memory_bytes")) > 0


def test_status_shows_queues_resident_adapters_and_routes(loraq_stack: RunningStack, ran: dict[str, int]) -> None:
    done = loraq(loraq_stack, "status")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"lora.{ADAPTER}" in out
    assert "worker1@" in out and ADAPTER in out.split("workers", 1)[1]  # resident on the worker
    assert "routes" in out and "100%" in out
    body = loraq_stack.client().get("/v1/admin/status").json()
    [worker] = body["workers"]
    assert ADAPTER in worker["resident"] and worker["heartbeat_age_s"] < 10
    assert worker["metrics_port"] == loraq_stack.metrics_port
    tenant_key = loraq(loraq_stack, "keys", "create", "ops-tenant").stdout.strip()
    refused = loraq_stack.client(tenant_key).get("/v1/admin/status")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin_required")


def test_usage_sums_the_token_counts_of_the_job_rows(loraq_stack: RunningStack, ran: dict[str, int]) -> None:
    done = loraq(loraq_stack, "usage", "--by", "adapter", "--json")
    assert done.returncode == 0, done.stderr
    [row] = [r for r in json.loads(done.stdout) if r["adapter"] == ADAPTER]
    assert (row["jobs"], row["prompt_tokens"], row["completion_tokens"]) == (
        ran["succeeded"],
        ran["prompt_tokens"],
        ran["completion_tokens"],
    )
    assert row["worker_seconds"] > 0
    table = loraq(loraq_stack, "usage", "--by", "tenant,adapter")
    assert table.returncode == 0 and "total" in table.stdout and ADAPTER in table.stdout
    bad = loraq(loraq_stack, "usage", "--by", "colour")
    assert bad.returncode == 1 and "invalid_group_by" in bad.stderr


def test_worker_and_gateway_log_json_lines_with_the_jobs_fields(loraq_stack: RunningStack, ran: dict[str, int]) -> None:
    lines = []
    for raw in loraq_stack.log.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("adapter") == ADAPTER:
            lines.append(line)
    accepted = [x for x in lines if x["msg"] == "job accepted"]
    succeeded = [x for x in lines if x["msg"].startswith("job succeeded")]
    assert len(accepted) >= 10 and len(succeeded) >= 10
    assert {x["tenant"] for x in accepted} == {"_admin"}
    assert all(x["worker"].startswith("worker1@") and x["version"] == 1 and x["job_id"] for x in succeeded)
    assert {x["job_id"] for x in accepted} >= {x["job_id"] for x in succeeded}


def test_no_secret_reaches_the_logs(loraq_stack: RunningStack, ran: dict[str, int]) -> None:
    with loraq_stack.client() as http:
        key = http.post("/v1/admin/keys", json={"tenant": "log-check"}).json()["key"]
    with loraq_stack.client(key) as http:
        assert http.post("/v1/jobs", json={"adapter": ADAPTER, "prompt": "secret check", "max_tokens": 4}).is_success
    with loraq_stack.client(key[:-4] + "XXXX") as http:  # a wrong key is refused, and not written down either
        assert http.get("/v1/adapters").status_code == 401
    text = loraq_stack.logs() + loraq_stack.log.read_text(errors="replace")
    for secret in (loraq_stack.admin_key, loraq_stack.flower_auth[1], key, key[:-4] + "XXXX"):
        assert secret not in text
