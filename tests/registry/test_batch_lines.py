"""Batch API lines in and out, without a database: every bad line becomes a coded error."""

from __future__ import annotations

import orjson
import pytest

from registry.batch_lines import BatchLine, LineError, error_line, failed_line, job_id_for, output_line, parse_line
from registry.openai_schemas import CHAT_COMPLETIONS, COMPLETIONS
from registry.schemas import FinishReason, GenerationResult


def line(**fields: object) -> bytes:
    base: dict[str, object] = {
        "custom_id": "a",
        "method": "POST",
        "url": COMPLETIONS,
        "body": {"model": "upper", "prompt": "hi", "max_tokens": 8},
    }
    return orjson.dumps(base | fields)


def parsed(raw: bytes, endpoint: str = COMPLETIONS) -> BatchLine | LineError:
    return parse_line(raw, batch_id="batch_x", line_no=3, endpoint=endpoint)


def test_a_good_completions_line_becomes_a_job_with_openai_defaults() -> None:
    got = parsed(line())
    assert isinstance(got, BatchLine)
    assert (got.custom_id, got.line_no, got.job.adapter, got.job.prompt) == ("a", 3, "upper", "hi")
    assert got.job.temperature == 1.0 and got.job.max_tokens == 8  # OpenAI's default temperature
    assert got.job_id == job_id_for("batch_x", 3) != job_id_for("batch_x", 4)


def test_a_chat_line_keeps_its_messages_and_joins_text_parts() -> None:
    body = {
        "model": "rot13",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    }
    got = parsed(line(url=CHAT_COMPLETIONS, body=body), CHAT_COMPLETIONS)
    assert isinstance(got, BatchLine)
    assert got.job.messages is not None and got.job.messages[0].content == "ab"
    assert got.job.max_tokens == 256  # loraq's documented chat default


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_line"),
        (line(custom_id=""), "invalid_custom_id"),
        (line(custom_id=7), "invalid_custom_id"),
        (line(method="GET"), "invalid_method"),
        (line(url=CHAT_COMPLETIONS), "invalid_url"),
        (line(body="hi"), "invalid_body"),
        (line(body={"model": "Bad Name", "prompt": "x"}), "model_not_found"),
        (line(body={"model": "upper", "prompt": "x", "n": 3}), "unsupported_parameter"),
        (line(body={"model": "upper", "prompt": "x", "logprobs": 2}), "unsupported_parameter"),
        (line(body={"model": "upper", "prompt": ["a", "b"]}), "unsupported_parameter"),
        (line(body={"model": "upper", "prompt": "x", "temperature": 9}), "invalid_request"),
        (line(body={"model": "upper"}), "invalid_request"),
    ],
)
def test_bad_lines_become_coded_errors_with_their_custom_id(raw: bytes, code: str) -> None:
    got = parsed(raw)
    assert isinstance(got, LineError), got
    assert got.code == code and got.line_no == 3 and got.message


def test_output_and_error_lines_have_openais_shape() -> None:
    job_id = job_id_for("batch_x", 0)
    result = GenerationResult(text="HI", finish_reason=FinishReason.STOP, prompt_tokens=3, completion_tokens=2)
    out = orjson.loads(
        output_line(endpoint=CHAT_COMPLETIONS, job_id=job_id, custom_id="a", model="upper", created=5, result=result)
    )
    assert out["custom_id"] == "a" and out["error"] is None and out["id"].startswith("batch_req_")
    body = out["response"]["body"]
    assert out["response"]["status_code"] == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "HI"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    failed = orjson.loads(failed_line(job_id=job_id, custom_id="a", code="engine_error", message="boom"))
    assert failed["response"]["status_code"] == 500 and failed["response"]["body"]["error"]["code"] == "engine_error"
    refused = orjson.loads(error_line(line_id="batch_req_1", custom_id=None, code="invalid_json", message="m"))
    assert refused == {
        "id": "batch_req_1",
        "custom_id": None,
        "response": None,
        "error": {"code": "invalid_json", "message": "m"},
    }
