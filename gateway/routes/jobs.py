"""``/v1/jobs``: submit, read (with long-poll)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from gateway.deps import CurrentTenant, PublisherDep, SessionDep, SettingsDep
from registry import adapters, jobs
from registry.errors import InvalidRequest, TooLarge
from registry.schemas import TERMINAL_STATUSES, JobAccepted, JobCreate, JobStatus, JobView, Priority

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def check_limits(body: JobCreate, *, max_prompt_chars: int, max_tokens_limit: int) -> None:
    """Limits that depend on settings (the schema checks the rest)."""
    if not body.prompt.strip():
        raise InvalidRequest("prompt is empty; send the text to generate from.", code="prompt_empty")
    if len(body.prompt) > max_prompt_chars:
        raise TooLarge(
            f"prompt has {len(body.prompt)} characters; the limit is {max_prompt_chars} (LORAQ_MAX_PROMPT_CHARS).",
            code="prompt_too_long",
        )
    if body.max_tokens > max_tokens_limit:
        raise InvalidRequest(
            f"max_tokens {body.max_tokens} is above the limit of {max_tokens_limit} (LORAQ_MAX_TOKENS_LIMIT).",
            code="max_tokens_out_of_range",
        )


@router.post("", status_code=202, response_model=JobAccepted)
def submit_job(
    body: JobCreate,
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    publisher: PublisherDep,
) -> JobAccepted:
    """Record the job, then publish it to ``lora.<adapter>``. A job whose
    message cannot be published is marked failed and the caller gets 503."""
    check_limits(body, max_prompt_chars=settings.max_prompt_chars, max_tokens_limit=settings.max_tokens_limit)
    job_id = jobs.new_job_id()
    with session.begin():
        resolved = adapters.resolve(session, tenant=tenant, name=body.adapter, routing_key=body.routing_key or job_id)
        job = jobs.create_job(session, tenant=tenant, request=body, resolved=resolved, job_id=job_id)
    accepted = JobAccepted(id=job.id, status=JobStatus(job.status), adapter=resolved.name, version=resolved.version)
    if job.id != job_id:  # idempotent retry: the first submit already published
        return accepted
    try:
        publisher.publish(jobs.task_for(job, resolved, body), priority=Priority.INTERACTIVE)
    except Exception as exc:
        with session.begin():
            jobs.fail_unpublished(session, job_id=job.id, message=str(exc))
        raise
    return accepted


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
