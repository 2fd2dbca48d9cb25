"""The ``loraq`` CLI against a live stack, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.stack import RunningStack
from workers.demo_model import adapter_dir

pytestmark = [pytest.mark.e2e]

LORAQ = str(Path(sys.executable).parent / "loraq")


def loraq(stack: RunningStack, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    env.update(LORAQ_URL=stack.url, LORAQ_HOME=str(stack.home), COLUMNS="200")
    env["LORAQ_API_KEY" if key else "LORAQ_ADMIN_KEY"] = key or stack.admin_key
    return subprocess.run([LORAQ, *args], env=env, capture_output=True, text=True, timeout=300)


def test_demo_against_a_running_stack_prints_every_row_checked(loraq_stack: RunningStack) -> None:
    done = loraq(loraq_stack, "demo", "--count", "12")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("✔") == 12
    assert "✘" not in done.stdout


def test_submit_wait_prints_the_result_and_a_tenant_key_works(loraq_stack: RunningStack) -> None:
    assert loraq(loraq_stack, "demo", "--count", "4").returncode == 0  # skills registered
    key = loraq(loraq_stack, "keys", "create", "acme").stdout.strip()
    assert key.startswith("lq-")
    done = loraq(loraq_stack, "submit", "rot13", "Hello", "--wait", key=key)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["result"]["text"] == "Uryyb"
    listed = loraq(loraq_stack, "adapters", "list", key=key)
    assert "lora.rot13" in listed.stdout


def test_cli_errors_are_one_line_with_the_code(loraq_stack: RunningStack) -> None:
    done = loraq(loraq_stack, "submit", "no-such-adapter", "hi")
    assert done.returncode == 1
    assert "adapter_not_found" in done.stderr
    done = loraq(loraq_stack, "adapters", "add", "broken", "/nonexistent")
    assert done.returncode == 1
    assert "adapter_uri_outside_roots" in done.stderr


def test_canary_promote_rollback_and_retire_from_the_cli(loraq_stack: RunningStack) -> None:
    for skill in ("upper", "rot13"):
        added = loraq(loraq_stack, "adapters", "add", "canary", str(adapter_dir(skill)))
        assert added.returncode == 0, added.stderr
    steps = [
        (
            ("routes", "set", "canary", "v1=90", "v2=10", "--shadow", "v1:0.05"),
            "canary: v1=90%, v2=10%; shadow v1 on 5% of jobs",
        ),
        (("routes", "promote", "canary"), "canary: v2=100%; shadow v1 on 5% of jobs"),
        (("routes", "rollback", "canary"), "canary: v1=90%, v2=10%; shadow v1 on 5% of jobs"),
        (("routes", "set", "canary", "v2=100"), "canary: v2=100%"),
        (("adapters", "retire", "canary", "1"), "canary v1 retired"),
    ]
    for args, printed in steps:
        done = loraq(loraq_stack, *args)
        assert done.returncode == 0 and done.stdout.strip() == printed, (args, done.stdout, done.stderr)
    shown = loraq(loraq_stack, "adapters", "show", "canary")
    assert shown.returncode == 0, shown.stderr
    rows = [line for line in shown.stdout.splitlines() if line.startswith("│ v")]
    assert [r.split("│")[1:4] for r in rows] == [
        [" v1      ", " retired ", " 0%    "],
        [" v2      ", " active  ", " 100%  "],
    ]
    for args, code in [
        (("routes", "set", "canary", "v1=100"), "version_retired"),
        (("routes", "set", "canary", "v2=50"), "route_invalid"),
        (("routes", "rollback", "no-such-adapter"), "adapter_not_found"),
    ]:
        done = loraq(loraq_stack, *args)
        assert done.returncode == 1 and code in done.stderr, (args, done.stderr)
    key = loraq(loraq_stack, "keys", "create", "routes-tenant").stdout.strip()
    denied = loraq(loraq_stack, "routes", "promote", "canary", key=key)
    assert denied.returncode == 1 and "admin_required" in denied.stderr


def test_tenant_quotas_from_the_cli(loraq_stack: RunningStack) -> None:
    done = loraq(loraq_stack, "tenants", "set", "quota-tenant", "--max-queued", "3", "--max-tokens-per-day", "1000")
    assert done.returncode == 0 and done.stdout.strip() == "quota-tenant: 3 live jobs, 1000 tokens/day", done.stderr
    cleared = loraq(loraq_stack, "tenants", "set", "quota-tenant")
    assert cleared.stdout.strip() == "quota-tenant: no limits"


def test_a_new_version_is_served_by_the_running_worker_without_a_restart(loraq_stack: RunningStack) -> None:
    for version, (skill, answer) in enumerate([("upper", "HELLO"), ("rot13", "uryyb")], start=1):
        assert loraq(loraq_stack, "adapters", "add", "hot-version", str(adapter_dir(skill))).returncode == 0
        done = loraq(loraq_stack, "submit", "hot-version", "hello", "--wait")
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout)
        assert (job["version"], job["status"], job["result"]["text"]) == (version, "succeeded", answer)


def test_batches_submit_waits_with_progress_and_downloads_both_files(loraq_stack: RunningStack, tmp_path: Path) -> None:
    assert loraq(loraq_stack, "demo", "--count", "4").returncode == 0  # skills registered
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": skill, "prompt": "Hello World", "max_tokens": 32, "temperature": 0},
        }
        for i, skill in enumerate(["upper", "rot13", "no-such-adapter"])
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    done = loraq(loraq_stack, "batches", "submit", str(source), "--wait", "--download", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed: 2 completed, 1 failed of 3" in done.stdout
    batch_id = done.stdout.split()[0]
    outputs = [json.loads(x) for x in (tmp_path / "out" / f"{batch_id}_output.jsonl").read_text().splitlines()]
    texts = {o["custom_id"]: o["response"]["body"]["choices"][0]["text"] for o in outputs}
    assert texts == {"r0": "HELLO WORLD", "r1": "Uryyb Jbeyq"}
    errors = [json.loads(x) for x in (tmp_path / "out" / f"{batch_id}_error.jsonl").read_text().splitlines()]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("r2", "adapter_not_found")]
    assert batch_id in loraq(loraq_stack, "batches", "list").stdout
    assert json.loads(loraq(loraq_stack, "batches", "get", batch_id).stdout)["status"] == "completed"
    assert "batch_not_cancellable" in loraq(loraq_stack, "batches", "cancel", batch_id).stderr
