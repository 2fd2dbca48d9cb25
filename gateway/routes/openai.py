"""OpenAI-compatible ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``.

``model`` names the adapter. Each request becomes one job at interactive
priority, through the same queue as ``POST /v1/jobs``; the handler waits for
it and answers in OpenAI's shape, with ``usage``. ``stream: true`` answers
with server-sent events once the job has ended: the text arrives in one
delta (generation runs on a worker and is recorded whole), then the finish
reason, optional usage, and ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from gateway import base_model
from gateway.deps import CurrentTenant, LimitsDep, PublisherDep, SessionDep, SessionsDep, SettingsDep
from gateway.submit import submit, wait_for
from registry import adapters
from registry.errors import Conflict, JobFailed, JobTimeout, NotFound
from registry.models import Adapter, Tenant
from registry.openai_schemas import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    ChatCompletionRequest,
    CompletionRequest,
    response_body,
    stream_chunks,
)
from registry.schemas import GenerationResult, JobError, JobStatus

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    tenant: CurrentTenant,
    sessions: SessionsDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    limits: LimitsDep,
) -> dict[str, Any] | StreamingResponse:
    return await _answer(COMPLETIONS, body, tenant, sessions, settings, publisher, limits)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    tenant: CurrentTenant,
    sessions: SessionsDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    limits: LimitsDep,
) -> dict[str, Any] | StreamingResponse:
    return await _answer(CHAT_COMPLETIONS, body, tenant, sessions, settings, publisher, limits)


async def _answer(
    endpoint: str,
    body: CompletionRequest | ChatCompletionRequest,
    tenant: Tenant,
    sessions: SessionsDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    limits: LimitsDep,
) -> dict[str, Any] | StreamingResponse:
    job = body.to_job(base_model.aliases(settings))

    def accept() -> str:
        with sessions() as session:
            return submit(job, tenant=tenant, session=session, settings=settings, publisher=publisher, limits=limits).id

    job_id = await run_in_threadpool(accept)
    view = await wait_for(sessions, tenant=tenant, job_id=job_id, timeout_s=settings.completion_timeout_s)
    result = _result_or_raise(view.status, view.result, view.error, job_id=job_id)
    created = int((view.finished_at or view.created_at).timestamp())
    if not body.stream:
        return response_body(endpoint, job_id=job_id, created=created, model=body.model, result=result)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunks = stream_chunks(
        endpoint, job_id=job_id, created=created, model=body.model, result=result, include_usage=include_usage
    )
    return StreamingResponse(_sse(chunks), media_type="text/event-stream")


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


def _sse(chunks: list[dict[str, Any]]) -> Iterator[bytes]:
    for chunk in chunks:
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    yield b"data: [DONE]\n\n"


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
