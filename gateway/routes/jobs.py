"""``/v1/jobs``: submit, read (with long-poll)."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from gateway.deps import CurrentTenant, LimitsDep, PublisherDep, SessionDep, SettingsDep
from gateway.limits import check_job
from registry import adapters, jobs, quotas
from registry.adapters import ResolvedAdapter
from registry.models import Job
from registry.schemas import TERMINAL_STATUSES, JobAccepted, JobCreate, JobStatus, JobView, Priority

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger(__name__)


@router.post("", status_code=202, response_model=JobAccepted)
def submit_job(
    body: JobCreate,
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    limits: LimitsDep,
) -> JobAccepted:
    """Record the job, then publish it to ``lora.<adapter>``. A job whose
    message cannot be published is removed again and the caller gets 503:
    nothing is accepted that is not both recorded and queued."""
    check_job(
        body,
        limits=limits,
        max_prompt_chars=settings.max_prompt_chars,
        max_tokens_limit=settings.max_tokens_limit,
    )
    job_id = jobs.new_job_id()
    with session.begin():
        resolved = adapters.resolve(session, tenant=tenant, name=body.adapter, routing_key=body.routing_key or job_id)
        if (
            body.idempotency_key is None
            or jobs.find_idempotent(session, tenant=tenant, key=body.idempotency_key) is None
        ):
            quotas.enforce(session, tenant=tenant)  # a retry of an accepted job is never refused
        job = jobs.create_job(session, tenant=tenant, request=body, resolved=resolved, job_id=job_id)
        if job.id != job_id:  # idempotent retry: answer with the first job as it was routed
            version = jobs.version_number(session, job)
            return JobAccepted(id=job.id, status=JobStatus(job.status), adapter=resolved.name, version=version)
    try:
        publisher.publish(jobs.task_for(job, resolved, body), priority=Priority.INTERACTIVE)
    except Exception:
        with session.begin():
            jobs.discard_unpublished(session, job_id=job.id)
        raise
    shadow_of(job, resolved, body, session=session, publisher=publisher)
    return JobAccepted(id=job.id, status=JobStatus(job.status), adapter=resolved.name, version=resolved.version)


@router.get("/{job_id}", response_model=JobView)
async def get_job(
    job_id: str,
    tenant: CurrentTenant,
    settings: SettingsDep,
    session: SessionDep,
    wait: float = Query(default=0.0, ge=0, description="Seconds to wait for the job to end (long-poll)."),
) -> JobView:
    deadline = time.monotonic() + min(wait, settings.max_wait_s)
    delay = 0.05
    while True:
        view = await run_in_threadpool(_read, session, tenant, job_id)
        if view.status in TERMINAL_STATUSES or time.monotonic() >= deadline:
            return view
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)


def _read(session: SessionDep, tenant: CurrentTenant, job_id: str) -> JobView:
    view = jobs.get_view(session, tenant=tenant, job_id=job_id)
    session.rollback()  # end the read transaction so the next poll sees new commits
    return view


@router.delete("/{job_id}", response_model=JobView)
def cancel_job(job_id: str, tenant: CurrentTenant, session: SessionDep, publisher: PublisherDep) -> JobView:
    """Cancel a queued job (it never runs) or a running one (its worker stops it
    at the next step, best effort through Redis; its result is never recorded)."""
    with session.begin():
        view = jobs.cancel(session, tenant=tenant, job_id=job_id)
    publisher.signal_cancel(job_id)
    return view


def shadow_of(
    job: Job, resolved: ResolvedAdapter, body: JobCreate, *, session: SessionDep, publisher: PublisherDep
) -> None:
    """Also run a shadow copy on the route's shadow version, at the lowest priority, if this job
    falls in its fraction. Best effort: the caller's job is accepted whatever happens here."""
    with session.begin():
        shadow = adapters.resolve_shadow(session, resolved=resolved, job_id=job.id)
        if shadow is None:
            return
        copy = jobs.create_shadow(session, primary=job, resolved=shadow, job_id=jobs.new_job_id())
    try:
        publisher.publish(jobs.task_for(copy, shadow, body), priority=Priority.SHADOW)
    except Exception:
        log.warning("could not queue the shadow of job %s; it is dropped", job.id, exc_info=True)
        with session.begin():
            jobs.discard_unpublished(session, job_id=copy.id)
