"""Accepting one job, and waiting for it: shared by ``/v1/jobs`` and the OpenAI endpoints.

A job is recorded, then published; one whose message cannot be published is
removed again and the caller gets 503: nothing is accepted that is not both
recorded and queued.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from gateway import base_model
from gateway.limits import ModelLimits, check_job
from gateway.settings import GatewaySettings
from gateway.webhooks.targets import check_target
from registry import adapters, jobs, webhooks
from registry.adapters import ResolvedAdapter
from registry.models import Job, Tenant
from registry.schemas import JobAccepted, JobCreate, JobStatus, Priority
from workers.contract.messages import Publisher

log = logging.getLogger(__name__)


def submit(
    body: JobCreate,
    *,
    tenant: Tenant,
    session: Session,
    settings: GatewaySettings,
    publisher: Publisher,
    limits: ModelLimits,
) -> JobAccepted:
    prompt_tokens = check_job(
        body,
        limits=limits,
        max_prompt_chars=settings.max_prompt_chars,
        max_tokens_limit=settings.max_tokens_limit,
    )
    if body.adapter == adapters.BASE_ADAPTER:
        base_model.ensure_committed(session, settings=settings)
    if body.webhook_url:
        check_target(body.webhook_url, allow=settings.webhook_allow)
    job_id = jobs.new_job_id()
    with session.begin():
        if body.webhook_url:
            webhooks.require_secret(session, tenant.id)
        resolved = adapters.resolve(session, tenant=tenant, name=body.adapter, routing_key=body.routing_key or job_id)
        # Admitted by the tenant's quotas in O(1), reserving prompt + max_tokens; a retry is never refused.
        job = jobs.create_job(
            session, tenant=tenant, request=body, resolved=resolved, job_id=job_id, prompt_tokens=prompt_tokens
        )
        if job.id != job_id:  # idempotent retry: answer with the first job as it was routed
            version = jobs.version_number(session, job)
            return JobAccepted(id=job.id, status=JobStatus(job.status), adapter=resolved.name, version=version)
        if body.webhook_url:
            webhooks.set_job_webhooks(session, {job.id: body.webhook_url})
    try:
        publisher.publish(jobs.task_for(job, resolved, body, tenant=tenant.name), priority=Priority.INTERACTIVE)
    except Exception:
        with session.begin():
            jobs.discard_unpublished(session, job_id=job.id)
        raise
    log.info(
        "job accepted",
        extra={"job_id": job.id, "adapter": resolved.name, "version": resolved.version, "tenant": tenant.name},
    )
    shadow_of(job, resolved, body, session=session, publisher=publisher)
    return JobAccepted(id=job.id, status=JobStatus(job.status), adapter=resolved.name, version=resolved.version)


def shadow_of(job: Job, resolved: ResolvedAdapter, body: JobCreate, *, session: Session, publisher: Publisher) -> None:
    """Also run a shadow copy on the route's shadow version, at the lowest priority, if this job
    falls in its fraction. Best effort: the caller's job is accepted whatever happens here."""
    if not resolved.has_shadow:
        return
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
