"""One line of a Batch API file in, one line of its output or error file out. Pure.

Input lines are OpenAI's ``{"custom_id", "method": "POST", "url", "body"}``.
A line that cannot run becomes a :class:`LineError` (it goes to the error
file, the rest of the file runs), never an exception.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from registry import ids
from registry.errors import LoraqError
from registry.openai_schemas import request_for, response_body
from registry.schemas import GenerationResult, JobCreate

MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class BatchLine:
    line_no: int
    custom_id: str
    job: JobCreate
    job_id: str  # derived from the batch id and the line number


@dataclass(frozen=True)
class LineError:
    line_no: int
    custom_id: str | None
    code: str
    message: str


def job_id_for(batch_id: str, line_no: int) -> str:
    """Deterministic, so a line ingested twice would collide instead of running twice; it carries the
    batch's creation time (``registry.ids.derived``), so a purged line's job reads ``job_expired``."""
    return str(ids.derived(batch_id, str(line_no)))


def parse_line(
    raw: bytes, *, batch_id: str, line_no: int, endpoint: str, aliases: Mapping[str, str] | None = None
) -> BatchLine | LineError:
    """Validate one input line against the batch's endpoint (``model`` is the adapter name, or one of
    ``aliases``)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return LineError(line_no, None, "invalid_json", f"line {line_no + 1} is not JSON: {exc}")
    if not isinstance(data, dict):
        return LineError(line_no, None, "invalid_line", f"line {line_no + 1} is not a JSON object.")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID or "\x00" in custom_id:
        return LineError(line_no, None, "invalid_custom_id", f"custom_id must be a string of 1 to {MAX_CUSTOM_ID}.")
    problem = _envelope_problem(data, endpoint)
    if problem is not None:
        return LineError(line_no, custom_id, problem[0], problem[1])
    try:
        job = request_for(endpoint, data["body"]).to_job(aliases)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return LineError(line_no, custom_id, "invalid_request", f"body.{where}: {first['msg']}")
    except LoraqError as exc:
        return LineError(line_no, custom_id, exc.code, exc.message)
    return BatchLine(line_no, custom_id, job, job_id_for(batch_id, line_no))


def _envelope_problem(data: dict[str, Any], endpoint: str) -> tuple[str, str] | None:
    if data.get("method", "POST") != "POST":
        return "invalid_method", "method must be POST."
    if data.get("url") != endpoint:
        return "invalid_url", f"url must be the batch's endpoint {endpoint} (got {data.get('url')!r})."
    if not isinstance(data.get("body"), dict):
        return "invalid_body", "body must be a JSON object (the request to run)."
    return None


def request_id(job_id: str) -> str:
    return f"batch_req_{uuid.UUID(job_id).hex}"


def output_line(
    *, endpoint: str, job_id: str, custom_id: str, model: str, created: int, result: GenerationResult
) -> bytes:
    body = response_body(endpoint, job_id=job_id, created=created, model=model, result=result)
    response = {"status_code": 200, "request_id": request_id(job_id), "body": body}
    return orjson.dumps({"id": request_id(job_id), "custom_id": custom_id, "response": response, "error": None})


def failed_line(*, job_id: str, custom_id: str, code: str, message: str) -> bytes:
    """A request that ran and failed: OpenAI writes the HTTP answer it would have given."""
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    response = {"status_code": 500, "request_id": request_id(job_id), "body": body}
    return orjson.dumps({"id": request_id(job_id), "custom_id": custom_id, "response": response, "error": None})


def error_line(*, line_id: str, custom_id: str | None, code: str, message: str) -> bytes:
    """A request that never ran (refused at ingest, cancelled, expired): no response, an error."""
    return orjson.dumps(
        {"id": line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
    )
