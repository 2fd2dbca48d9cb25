"""``/v1/jobs``: submit, read (with long-poll)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from gateway.deps import CurrentTenant, LimitsDep, PublisherDep, SessionDep, SessionsDep, SettingsDep
from gateway.submit import submit, wait_for
from registry import jobs
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
    sessions: SessionsDep,
    wait: float = Query(default=0.0, ge=0, description="Seconds to wait for the job to end (long-poll)."),
) -> JobView:
    return await wait_for(sessions, tenant=tenant, job_id=job_id, timeout_s=min(wait, settings.max_wait_s))


@router.delete("/{job_id}", response_model=JobView)
def cancel_job(job_id: str, tenant: CurrentTenant, session: SessionDep, publisher: PublisherDep) -> JobView:
    """Cancel a queued job (it never runs) or a running one (its worker stops it
    at the next step, best effort through Redis; its result is never recorded)."""
    with session.begin():
        view = jobs.cancel(session, tenant=tenant, job_id=job_id)
    publisher.signal_cancel(job_id)
    return view
