"""OpenAI-compatible ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``.

``model`` names the adapter. Each request becomes one job at interactive
priority, through the same queue as ``POST /v1/jobs``; the handler waits for
it (woken by the worker's completion notification) and answers in OpenAI's
shape, with ``usage``. ``stream: true`` relays the text as the worker decodes
it (``gateway/relay.py``), as server-sent events in OpenAI's chunk format,
and ends with the recorded result: its finish reason, optional usage, and
``[DONE]``, or an error event when the stream cannot be completed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from gateway import base_model
from gateway.deps import CurrentTenant, JobEventsDep, LimitsDep, PublisherDep, SessionDep, SessionsDep, SettingsDep
from gateway.relay import Ended, relay
from gateway.submit import submit
from registry import adapters
from registry.errors import Conflict, JobFailed, JobTimeout, LoraqError, NotFound, Unavailable
from registry.models import Adapter, Tenant
from registry.openai_schemas import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    ChatCompletionRequest,
    ChunkStream,
    CompletionRequest,
    response_body,
)
from registry.schemas import GenerationResult, JobError, JobStatus

router = APIRouter(prefix="/v1", tags=["openai"])
log = logging.getLogger(__name__)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    tenant: CurrentTenant,
    sessions: SessionsDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    limits: LimitsDep,
    events: JobEventsDep,
) -> dict[str, Any] | StreamingResponse:
    return await _answer(COMPLETIONS, body, tenant, sessions, settings, publisher, limits, events)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    tenant: CurrentTenant,
    sessions: SessionsDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    limits: LimitsDep,
    events: JobEventsDep,
) -> dict[str, Any] | StreamingResponse:
    return await _answer(CHAT_COMPLETIONS, body, tenant, sessions, settings, publisher, limits, events)


async def _answer(
    endpoint: str,
    body: CompletionRequest | ChatCompletionRequest,
    tenant: Tenant,
    sessions: SessionsDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    limits: LimitsDep,
    events: JobEventsDep,
) -> dict[str, Any] | StreamingResponse:
    job = body.to_job(base_model.aliases(settings)).model_copy(update={"stream": bool(body.stream)})

    def accept() -> str:
        with sessions() as session:
            return submit(job, tenant=tenant, session=session, settings=settings, publisher=publisher, limits=limits).id

    job_id = await run_in_threadpool(accept)
    if body.stream:
        return await _stream(
            endpoint, body, events, tenant=tenant, job_id=job_id, timeout_s=settings.completion_timeout_s
        )
    view = await events.wait(tenant=tenant, job_id=job_id, timeout_s=settings.completion_timeout_s)
    result = _result_or_raise(view.status, view.result, view.error, job_id=job_id)
    created = int((view.finished_at or view.created_at).timestamp())
    return response_body(endpoint, job_id=job_id, created=created, model=body.model, result=result)


async def _stream(
    endpoint: str,
    body: CompletionRequest | ChatCompletionRequest,
    events: JobEventsDep,
    *,
    tenant: Tenant,
    job_id: str,
    timeout_s: float,
) -> StreamingResponse:
    """Wait for the first text (or the end) before answering, so a job that fails before saying
    anything answers with its HTTP error, as when not streamed."""
    items = relay(events, tenant=tenant, job_id=job_id, timeout_s=timeout_s)
    first = await anext(items)
    if isinstance(first, Ended):
        try:
            _recorded(first, job_id=job_id)
        except LoraqError:
            await items.aclose()
            raise
    fmt = ChunkStream(endpoint=endpoint, job_id=job_id, created=int(time.time()), model=body.model)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_sse(first, items, fmt, include_usage=include_usage), media_type="text/event-stream")


async def _sse(
    first: str | Ended, items: AsyncGenerator[str | Ended, None], fmt: ChunkStream, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """The relayed text as chunks, then the recorded result's rest and end, or one error event."""
    try:
        for chunk in fmt.opening():
            yield _data(chunk)
        item = first
        while isinstance(item, str):
            yield _data(fmt.text(item))
            item = await anext(items)
        result, rest = _recorded(item, job_id=fmt.job_id)
        if rest:
            yield _data(fmt.text(rest))
        for chunk in fmt.closing(result, include_usage=include_usage):
            yield _data(chunk)
        yield b"data: [DONE]\n\n"
    except Exception as exc:  # the response has started: an error can only be an event now
        yield _data({"error": _error_body(exc, job_id=fmt.job_id)})
    finally:
        await items.aclose()


def _recorded(ended: Ended, *, job_id: str) -> tuple[GenerationResult, str]:
    """The recorded result and its text past what was streamed; raises what the client must be told."""
    view = ended.view
    result = _result_or_raise(view.status, view.result, view.error, job_id=job_id)
    if ended.rest is None:
        raise JobFailed(
            f"the text streamed so far is not the beginning of job {job_id}'s recorded result (the job ran again "
            f"after its worker died, and sampled differently); GET /v1/jobs/{job_id} has the result.",
            code="stream_diverged",
        )
    return result, ended.rest


def _error_body(exc: Exception, *, job_id: str) -> dict[str, str]:
    if not isinstance(exc, LoraqError):
        if isinstance(exc, OperationalError):
            exc = Unavailable("The registry database is unreachable; retry later.", code="database_unavailable")
        else:
            log.exception("stream of job %s failed", job_id, exc_info=exc)
            return {
                "code": "internal_error",
                "message": "Unexpected server error; it has been logged.",
                "type": "internal",
            }
    return {"code": exc.code, "message": exc.message, "type": exc.kind.value}


def _result_or_raise(
    status: JobStatus, result: GenerationResult | None, error: JobError | None, *, job_id: str
) -> GenerationResult:
    if status == JobStatus.SUCCEEDED and result is not None:
        return result
    if status == JobStatus.FAILED:
        raise JobFailed(
            f"the request failed on a worker: {error.message if error else 'no reason recorded'} (job {job_id}).",
            code=error.code if error else "job_failed",
        )
    if status == JobStatus.CANCELLED:
        raise Conflict(f"job {job_id} was cancelled before it ended.", code="job_cancelled")
    raise JobTimeout(
        f"job {job_id} has not ended yet ({status.value}); it still runs: GET /v1/jobs/{job_id}?wait=60 reads it.",
    )


def _data(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _model(adapter: Adapter, owners: dict[int, str]) -> dict[str, Any]:
    return {
        "id": adapter.name,
        "object": "model",
        "created": int(adapter.created_at.timestamp()),
        "owned_by": owners.get(adapter.owner_tenant_id or 0, "loraq"),
    }


def _owners(session: SessionDep) -> dict[int, str]:
    return {t.id: t.name for t in session.scalars(select(Tenant))}


@router.get("/models")
def list_models(tenant: CurrentTenant, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """The base model (no adapter) and the adapters this key may use with an active route."""
    routable = set(adapters.active_adapter_names(session)) - {adapters.BASE_ADAPTER}
    owners = _owners(session)
    data = [_base(settings)]
    data += [_model(a, owners) for a in adapters.list_visible(session, tenant=tenant) if a.name in routable]
    return {"object": "list", "data": data}


def _base(settings: SettingsDep) -> dict[str, Any]:
    created = int(settings.base_model.stat().st_mtime) if settings.base_model.exists() else 0
    return {"id": settings.base_model_name(), "object": "model", "created": created, "owned_by": "loraq"}


@router.get("/models/{model:path}")
def get_model(model: str, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    if model in base_model.aliases(settings) or model == adapters.BASE_ADAPTER:
        return _base(settings)
    try:
        adapter = adapters.get_visible(session, tenant=tenant, name=model)
    except NotFound:
        raise NotFound(f"model {model!r} does not exist; GET /v1/models lists yours.", code="model_not_found") from None
    return _model(adapter, _owners(session))
