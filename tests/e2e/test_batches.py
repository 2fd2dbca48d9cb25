"""Bulk files through real processes: malformed lines isolated, a gateway killed mid-ingest, a cancel mid-run.

The gateway reads the file 50 lines per transaction here so that a kill lands
in the middle of the ingest; the worker is the real Celery worker on the demo
model, and every output is checked by its skill's rule.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from gateway.cli import DEMO_PHRASES
from gateway.processes import wait_ready
from gateway.stack import gateway_argv
from registry.models import BatchRow, Job
from tests.fixtures.stack import Pipeline, pipeline
from workers.demo_model.skills import expected

pytestmark = [pytest.mark.e2e]

SKILLS = ("upper", "rot13", "swapcase", "novowel")
GATEWAY_ENV = {"LORAQ_INGEST_CHUNK_LINES": "50", "LORAQ_BATCH_LEASE_S": "2", "LORAQ_BATCH_POLL_S": "0.2"}
BAD_KINDS = ("not json", "no custom_id", "wrong url", "unknown model", "duplicate", "max_tokens", "blank prompt")


def good_line(i: int) -> tuple[dict[str, Any], str]:
    skill, text = SKILLS[i % 4], DEMO_PHRASES[(i // 4) % len(DEMO_PHRASES)]
    if i % 2:
        url, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}
    else:
        url, body = "/v1/completions", {"prompt": text}
    body |= {"model": skill, "max_tokens": 64, "temperature": 0}
    return {"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}, expected(skill, text)


def bad_line(i: int, kind: str) -> bytes:
    line, _ = good_line(i)
    if kind == "not json":
        return b'{"custom_id": "r%d", "body": ' % i
    if kind == "no custom_id":
        del line["custom_id"]
    elif kind == "wrong url":
        line["url"] = "/v1/embeddings"
    elif kind == "unknown model":
        line["body"]["model"] = "no-such-adapter"
    elif kind == "duplicate":
        line["custom_id"] = "r0"
    elif kind == "max_tokens":
        line["body"]["max_tokens"] = 10_000
    elif "prompt" in line["body"]:
        line["body"]["prompt"] = "   "
    else:
        line["body"]["messages"] = [{"role": "user", "content": ""}]
    return orjson.dumps(line)


def make_file(lines: int, *, bad_every: int) -> tuple[bytes, dict[str, str], dict[int, str]]:
    """JSONL with one bad line in ``bad_every``; returns (data, custom_id -> expected text, line -> bad kind).
    The endpoint of each line is mixed, so only lines of the batch's endpoint are good: see ``for_endpoint``."""
    out, good, bad = [], {}, {}
    for i in range(lines):
        if i % bad_every == bad_every - 1:
            kind = BAD_KINDS[(i // bad_every) % len(BAD_KINDS)]
            out.append(bad_line(i, kind))
            bad[i] = kind
        else:
            line, want = good_line(i)
            out.append(orjson.dumps(line))
            good[line["custom_id"]] = want
    return b"\n".join(out) + b"\n", good, bad


def single_endpoint(data: bytes) -> bytes:
    """Every line on /v1/chat/completions (a batch has one endpoint)."""
    lines = []
    for raw in data.splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            lines.append(raw)
            continue
        if line.get("url") == "/v1/completions":
            text = line["body"].pop("prompt")
            line["body"]["messages"] = [{"role": "user", "content": text}]
            line["url"] = "/v1/chat/completions"
        lines.append(orjson.dumps(line))
    return b"\n".join(lines) + b"\n"


def upload(http: httpx.Client, data: bytes) -> str:
    resp = http.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
    assert resp.status_code == 200, resp.text
    file_id: str = resp.json()["id"]
    return file_id


def wait_batch(http: httpx.Client, batch_id: str, *, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch: dict[str, Any] = http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch['status']}: {batch['request_counts']}"
        time.sleep(0.3)


def lines_of(http: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    resp = http.get(f"/v1/files/{file_id}/content")
    assert resp.status_code == 200, resp.text
    return [orjson.loads(raw) for raw in resp.content.splitlines()]


def answer_text(line: dict[str, Any]) -> str:
    text: str = line["response"]["body"]["choices"][0]["message"]["content"]
    return text


def start_batch(p: Pipeline, data: bytes) -> dict[str, Any]:
    """A worker, the demo skills, and a chat batch over ``data``."""
    p.spawn_worker("w1")
    for skill in SKILLS:
        p.register_demo_adapter(skill, skill)
    batch: dict[str, Any] = p.http.post(
        "/v1/batches", json={"input_file_id": upload(p.http, data), "endpoint": "/v1/chat/completions"}
    ).json()
    return batch


def kill_gateway_mid_ingest(p: Pipeline, batch_id: str, total_lines: int) -> int:
    """SIGKILL the gateway once some lines are recorded and not all; start it again. Returns the lines read then."""
    deadline = time.monotonic() + 60
    while True:
        with p.sessions() as s:
            read = s.scalar(select(BatchRow.ingested_lines).where(BatchRow.id == batch_id)) or 0
        if read > 0:
            break
        assert time.monotonic() < deadline, "ingest never started"
        time.sleep(0.005)
    gateway = p.stack.procs["gateway"]
    os.kill(gateway.pid, signal.SIGKILL)
    gateway.wait(10)
    with p.sessions() as s:
        at_kill = s.scalar(select(BatchRow.ingested_lines).where(BatchRow.id == batch_id)) or 0
    assert at_kill < total_lines, "the ingest finished before the kill; lower LORAQ_INGEST_CHUNK_LINES"
    p.stack.spawn("gateway", gateway_argv(p.stack.config.host, p.stack.config.port), extra_env=GATEWAY_ENV)
    wait_ready(p.stack.url, timeout=60, dead=p.stack.dead)
    return at_kill


def test_bulk_file_with_bad_lines_survives_a_gateway_killed_mid_ingest(tmp_path: Path, redis_url: str) -> None:
    raw, good, bad = make_file(5000, bad_every=50)
    data = single_endpoint(raw)
    with pipeline(tmp_path, redis_url, gateway_env=GATEWAY_ENV) as p:
        batch = start_batch(p, data)
        at_kill = kill_gateway_mid_ingest(p, batch["id"], 5000)
        done = wait_batch(p.http, batch["id"], statuses=("completed", "failed"), timeout=400)

        assert done["status"] == "completed", done
        counts = done["request_counts"]
        assert counts == {"total": 5000, "completed": len(good), "failed": len(bad)}, (counts, at_kill)
        outputs = lines_of(p.http, done["output_file_id"])
        errors = lines_of(p.http, done["error_file_id"])
        assert sorted(o["custom_id"] for o in outputs) == sorted(good)  # every good line once
        assert {o["custom_id"]: answer_text(o) for o in outputs} == good  # each by its skill's rule
        assert len(errors) == len(bad)
        by_code = {e["error"]["code"] for e in errors}
        assert {"invalid_json", "invalid_custom_id", "invalid_url", "adapter_not_found"} <= by_code
        assert {"duplicate_custom_id", "max_tokens_out_of_range", "prompt_empty"} <= by_code
        assert all(e["response"] is None for e in errors)
        with p.sessions() as s:
            jobs = s.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch["id"]))
            lines = s.scalar(select(func.count(func.distinct(Job.line_no))).where(Job.batch_id == batch["id"]))
        assert jobs == lines == len(good)  # nothing ingested twice across the kill


def test_cancelling_a_running_batch_ends_every_line_once(tmp_path: Path, redis_url: str) -> None:
    raw, good, _ = make_file(3000, bad_every=10_000)
    data = single_endpoint(raw)
    with pipeline(tmp_path, redis_url, gateway_env=GATEWAY_ENV) as p:
        batch = start_batch(p, data)
        deadline = time.monotonic() + 120
        while p.http.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"] < 50:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        cancelling = p.http.post(f"/v1/batches/{batch['id']}/cancel").json()
        assert cancelling["status"] == "cancelling"
        done = wait_batch(p.http, batch["id"], statuses=("cancelled",), timeout=120)

        counts = done["request_counts"]
        outputs = lines_of(p.http, done["output_file_id"])
        errors = lines_of(p.http, done["error_file_id"])
        assert counts["completed"] == len(outputs) >= 50
        assert counts["failed"] == len(errors) > 0
        assert counts["total"] == counts["completed"] + counts["failed"] <= 3000
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        ids = [line["custom_id"] for line in outputs + errors]
        assert len(ids) == len(set(ids)) == counts["total"]
        assert all(answer_text(o) == good[o["custom_id"]] for o in outputs)
        assert p.http.post(f"/v1/batches/{batch['id']}/cancel").json()["status"] == "cancelled"  # idempotent
