"""Log lines: JSON with the job's fields for machines, the same fields appended for people."""

from __future__ import annotations

import json
import logging

from registry.logs import JsonFormatter, TextFormatter, chosen_format


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("loraq.worker", logging.WARNING, __file__, 1, "job failed (%s)", ("engine_error",), None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_jobs_fields_and_leave_out_absent_ones() -> None:
    line = json.loads(
        JsonFormatter().format(record(job_id="j1", adapter="upper", version=2, worker="w1@h", tenant="acme"))
    )
    assert (
        line["msg"] == "job failed (engine_error)" and line["level"] == "WARNING" and line["logger"] == "loraq.worker"
    )
    assert {k: line[k] for k in ("job_id", "adapter", "version", "worker", "tenant")} == {
        "job_id": "j1",
        "adapter": "upper",
        "version": 2,
        "worker": "w1@h",
        "tenant": "acme",
    }
    assert "batch_id" not in line and line["ts"].endswith("+00:00")


def test_a_traceback_is_one_json_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = record()
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc"]


def test_text_lines_append_the_fields_and_the_format_follows_the_setting() -> None:
    assert TextFormatter().format(record(job_id="j1", adapter="upper")).endswith("[job_id=j1 adapter=upper]")
    assert chosen_format("json") == "json" and chosen_format("TEXT") == "text"
