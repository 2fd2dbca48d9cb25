"""``/v1/jobs``: submit, read (with long-poll), follow a streamed job's text, cancel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from gateway.deps import CurrentTenant, JobEventsDep, LimitsDep, PublisherDep, SessionDep, SettingsDep
from gateway.job_events import JobEvents
from gateway.relay import relay
from gateway.submit import submit
from registry import jobs
from registry.models import Tenant
from registry.schemas import JobAccepted, JobCreate, JobView

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=202, response_model=JobAccepted)
def submit_job(
    body: JobCreate,
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    limits: LimitsDep,
) -> JobAccepted:
    """Record the job, then publish it to ``lora.<adapter>`` (503 when it cannot be queued)."""
    return submit(body, tenant=tenant, session=session, settings=settings, publisher=publisher, limits=limits)


@router.get("/{job_id}", response_model=JobView)
async def get_job(
    job_id: str,
    tenant: CurrentTenant,
    settings: SettingsDep,
    events: JobEventsDep,
    wait: float = Query(default=0.0, ge=0, description="Seconds to wait for the job to end (long-poll)."),
) -> JobView:
    """The job; with ``wait``, once it ends (woken by the worker's notification) or when ``wait`` runs out."""
    return await events.wait(tenant=tenant, job_id=job_id, timeout_s=min(wait, settings.max_wait_s))


@router.get("/{job_id}/stream")
async def stream_job(
    job_id: str,
    tenant: CurrentTenant,
    settings: SettingsDep,
    events: JobEventsDep,
    timeout: float = Query(default=600.0, gt=0, le=3600, description="Seconds to follow the job at most."),
) -> StreamingResponse:
    """The job's text as it is generated, as server-sent events: ``{"type": "delta", "text"}`` while it
    runs (jobs submitted with ``stream: true``; others send their text once it ends), then one
    ``{"type": "end", "job": ...}`` with the job as recorded. A stream that breaks (the worker died
    and the job runs again) ends with the recorded text's rest, or ``{"type": "error"}`` when what
    was sent does not begin the recorded text; never silently short."""
    await events.wait(tenant=tenant, job_id=job_id, timeout_s=0)  # 404 unless the caller's job
    return StreamingResponse(_job_events(events, tenant, job_id, timeout), media_type="text/event-stream")


async def _job_events(events: JobEvents, tenant: Tenant, job_id: str, timeout: float) -> AsyncIterator[bytes]:
    async for item in relay(events, tenant=tenant, job_id=job_id, timeout_s=timeout):
        if isinstance(item, str):
            yield _event({"type": "delta", "text": item})
            continue
        if item.rest:
            yield _event({"type": "delta", "text": item.rest})
        elif item.rest is None and item.view.result is not None:
            message = "the text streamed so far does not begin the recorded result (the job ran again)"
            yield _event({"type": "error", "code": "stream_diverged", "message": message})
        yield _event({"type": "end", "job": item.view.model_dump(mode="json")})


def _event(data: dict[str, object]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


@router.delete("/{job_id}", response_model=JobView)
def cancel_job(job_id: str, tenant: CurrentTenant, session: SessionDep, publisher: PublisherDep) -> JobView:
    """Cancel a queued job (it never runs) or a running one (its worker stops it
    at the next step, best effort through Redis; its result is never recorded)."""
    with session.begin():
        view = jobs.cancel(session, tenant=tenant, job_id=job_id)
    publisher.signal_cancel(job_id)
    return view
