"""Job repository: create (idempotently), read tenant-scoped, and record
outcomes exactly once.

A terminal row is never written again: every state change locks the live rows
it changes first (``registry.transitions``), so a message delivered twice
(at-least-once delivery) cannot record a result twice, and the rollups and
quota counters move in the same transaction by exactly what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry import ids, purge_marks, quotas, rollups, shadows, transitions, webhooks
from registry.adapters import ResolvedAdapter
from registry.errors import Conflict, NotFound
from registry.models import Adapter, AdapterVersion, Job, Tenant, utcnow
from registry.schemas import (
    TERMINAL_STATUSES,
    FinishReason,
    GenerationResult,
    JobCreate,
    JobError,
    JobStatus,
    JobView,
    Priority,
    SamplingParams,
    TaskJob,
)

_LIVE = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]


def new_job_id() -> str:
    """A version 7 UUID: its creation time is in it, so a read of a purged job can say so (``registry.ids``)."""
    return str(ids.uuid7())


def tenant_jobs(tenant: Tenant) -> Select[Job, str, int]:
    """The one place job reads are scoped to a tenant (admins see every job). Shadow jobs are
    never returned: their results are compared in the adapter's stats only."""
    query = (
        select(Job, Adapter.name, AdapterVersion.version)
        .join(Adapter, Adapter.id == Job.adapter_id)
        .join(AdapterVersion, AdapterVersion.id == Job.version_id)
        .where(Job.shadow_of.is_(None))
    )
    return query if tenant.is_admin else query.where(Job.tenant_id == tenant.id)


def find_idempotent(session: Session, *, tenant: Tenant, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == key))


def create_job(
    session: Session,
    *,
    tenant: Tenant,
    request: JobCreate,
    resolved: ResolvedAdapter,
    job_id: str,
    priority: Priority = Priority.INTERACTIVE,
    prompt_tokens: int | None = None,
) -> Job:
    """Insert a queued job, admitted by the tenant's quotas (``registry.quotas``: it reserves
    ``prompt_tokens``, the gateway's count, else an estimate, plus ``max_tokens``); over a quota,
    :class:`~registry.errors.QuotaExceeded` and the caller's transaction rolls back. An idempotency
    key already used by this tenant returns the first job instead (the caller retried), never refused."""
    job = Job(
        id=job_id,
        tenant_id=tenant.id,
        adapter_id=resolved.adapter_id,
        version_id=resolved.version_id,
        status=JobStatus.QUEUED.value,
        priority=int(priority),
        request=request.model_dump(mode="json"),
        routing_key=request.routing_key,
        idempotency_key=request.idempotency_key,
        reserved_tokens=quotas.reservation(request, prompt_tokens=prompt_tokens),
    )
    if request.idempotency_key is None:
        session.add(job)
        session.flush()
    else:
        try:
            with session.begin_nested():
                session.add(job)
        except IntegrityError:
            existing = find_idempotent(session, tenant=tenant, key=request.idempotency_key)
            if existing is None:
                raise
            return existing
    transitions.admit(session, tenant=tenant, change=transitions.created(job))
    return job


def create_shadow(session: Session, *, primary: Job, resolved: ResolvedAdapter, job_id: str) -> Job:
    """A copy of ``primary`` on the shadow version, at shadow priority, linked to it."""
    job = Job(
        id=job_id,
        tenant_id=primary.tenant_id,
        adapter_id=resolved.adapter_id,
        version_id=resolved.version_id,
        priority=int(Priority.SHADOW),
        request=primary.request,
        routing_key=primary.routing_key,
        shadow_of=primary.id,
    )
    session.add(job)
    session.flush()
    transitions.apply(session, [transitions.created(job)])
    return job


def version_number(session: Session, job: Job) -> int:
    version = session.get(AdapterVersion, job.version_id)
    assert version is not None  # FK
    return version.version


SAMPLING_FIELDS = frozenset(SamplingParams.model_fields)


def task_payload(
    *,
    job_id: str,
    resolved: ResolvedAdapter,
    request: Mapping[str, Any],
    enqueued_at: float,
    tenant: str | None = None,
) -> dict[str, Any]:
    """The one builder of what a job's message carries (a :class:`TaskJob` as JSON), from the job's
    recorded request (``JobCreate`` as JSON). Interactive submits, bulk ingest (tens of thousands of
    lines a second: plain dicts, no model per line) and every re-publish build it here."""
    payload: dict[str, Any] = {
        "job_id": job_id,
        "adapter": resolved.name,
        "version_id": resolved.version_id,
        "version": resolved.version,
        "uri": resolved.uri,
        "sha256": resolved.sha256,
        "prompt": request.get("prompt", ""),
        "sampling": {k: v for k, v in request.items() if k in SAMPLING_FIELDS},
        "enqueued_at": enqueued_at,
    }
    if request.get("messages") is not None:
        payload["messages"] = request["messages"]
    if tenant is not None:
        payload["tenant"] = tenant
    if request.get("stream"):
        payload["stream"] = True
    return payload


def task_for(job: Job, resolved: ResolvedAdapter, request: JobCreate, *, tenant: str | None = None) -> TaskJob:
    body = request.model_dump(mode="json", exclude_defaults=True)
    enqueued = job.created_at.timestamp()
    return TaskJob.model_validate(
        task_payload(job_id=job.id, resolved=resolved, request=body, enqueued_at=enqueued, tenant=tenant)
    )


def get_view(session: Session, *, tenant: Tenant, job_id: str) -> JobView:
    row = session.execute(tenant_jobs(tenant).where(Job.id == job_id)).first()
    if row is None:
        if purge_marks.expired(session, tenant=tenant, kind=purge_marks.Kind.JOB, object_id=job_id):
            raise NotFound(
                f"job {job_id!r} has expired: it ended longer ago than the retention (LORAQ_RETENTION_DAYS, or its "
                "batch's output_expires_after) and was deleted. Read results before they expire.",
                code="job_expired",
            )
        raise NotFound(f"job {job_id!r} does not exist.", code="job_not_found")
    job, name, version = row
    return view_of(job, adapter=name, version=version)


def result_of(job: Job) -> GenerationResult | None:
    if job.status != JobStatus.SUCCEEDED or job.finish_reason is None:
        return None
    return GenerationResult(
        text=job.text or "",
        finish_reason=FinishReason(job.finish_reason),
        prompt_tokens=job.prompt_tokens or 0,
        completion_tokens=job.completion_tokens or 0,
    )


def error_of(job: Job) -> JobError | None:
    return JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None


def view_of(job: Job, *, adapter: str, version: int) -> JobView:
    return JobView(
        id=job.id,
        status=JobStatus(job.status),
        adapter=adapter,
        version=version,
        priority=job.priority,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempts=job.attempts,
        worker=job.worker,
        queue_wait_s=job.queue_wait_s,
        run_time_s=job.run_time_s,
        result=result_of(job),
        error=error_of(job),
    )


def cancel(session: Session, *, tenant: Tenant, job_id: str) -> JobView:
    """Cancel a queued or running job of ``tenant``: a queued one never runs, a
    running one's result is never recorded. Cancelling twice is harmless; a
    job that already ended cannot be cancelled."""
    view = get_view(session, tenant=tenant, job_id=job_id)
    if view.status == JobStatus.CANCELLED:
        return view
    live = transitions.lock_live(session, Job.id == job_id)
    if not live:
        raise Conflict(
            f"job {job_id!r} already ended ({view.status.value}); nothing to cancel.", code="job_not_cancellable"
        )
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_LIVE))
        .values(status=JobStatus.CANCELLED.value, finished_at=now)
    )
    transitions.apply(session, [job.to(JobStatus.CANCELLED.value, finished_at=now) for job in live])
    announce_ended(session, live, lambda _: JobStatus.CANCELLED.value)
    session.flush()
    return get_view(session, tenant=tenant, job_id=job_id)


def discard_unpublished(session: Session, *, job_id: str) -> None:
    """Remove a job whose message could not be published: the caller got 503,
    so nothing was accepted, and a retry with the same idempotency key must
    create the job afresh. If the message did reach Redis after all, the
    worker finds no live row and skips it."""
    live = transitions.lock_live(session, Job.id == job_id, statuses=[JobStatus.QUEUED.value])
    if not live:
        return
    session.execute(delete(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value))
    transitions.apply(session, [job.to(None) for job in live])


def start(session: Session, *, job_ids: list[str], worker: str) -> dict[str, int]:
    """Mark jobs running and count the attempt; returns id -> attempts (this one
    included) for the jobs still worth running (a job already terminal — done by
    another delivery or cancelled — is skipped).

    The live rows are locked first, so the attempts counted and the rollups moved are those of
    the rows this call changed.
    """
    live = transitions.lock_live(session, Job.id.in_(job_ids))
    if not live:
        return {}
    stmt = (
        update(Job)
        .where(Job.id.in_([job.id for job in live]), Job.status.in_(_LIVE))
        .values(status=JobStatus.RUNNING.value, attempts=Job.attempts + 1, worker=worker, started_at=utcnow())
        .returning(Job.id, Job.attempts)
        .execution_options(synchronize_session=False)
    )
    attempts = {job_id: n for job_id, n in session.execute(stmt)}
    transitions.apply(session, [job.to(JobStatus.RUNNING.value) for job in live if job.status != JobStatus.RUNNING])
    return attempts


def live_attempts(session: Session, *, job_ids: list[str]) -> dict[str, int]:
    """id -> runs started so far, for the jobs still queued or running (ended ones are absent)."""
    rows = session.execute(select(Job.id, Job.attempts).where(Job.id.in_(job_ids), Job.status.in_(_LIVE)))
    return {job_id: attempts for job_id, attempts in rows}


@dataclass(frozen=True)
class Recorded:
    """A job as the registry holds it: what every delivery of it reports."""

    status: str
    result: GenerationResult | None
    error: JobError | None


def recorded(session: Session, job_ids: list[str]) -> dict[str, Recorded]:
    """id -> what the registry holds. Workers report this, not what they computed,
    so Celery's result and the registry agree even after duplicate deliveries."""
    rows = session.scalars(select(Job).where(Job.id.in_(job_ids)))
    return {job.id: Recorded(status=job.status, result=result_of(job), error=error_of(job)) for job in rows}


def fail_one(session: Session, *, job_id: str, worker: str, code: str, message: str) -> None:
    """Record a job as failed when the worker could not run it at all (exactly once)."""
    live = transitions.lock_live(session, Job.id == job_id)
    if not live:
        return
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_LIVE))
        .values(status=JobStatus.FAILED.value, error_code=code, error_message=message, worker=worker, finished_at=now)
    )
    transitions.apply(session, [job.to(JobStatus.FAILED.value, finished_at=now) for job in live])
    announce_ended(session, live, lambda _: JobStatus.FAILED.value)


def announce_ended(
    session: Session, live: Sequence[transitions.Live], status_of: Callable[[transitions.Live], str]
) -> None:
    """Record the webhook deliveries of jobs that just ended, in the transaction that ends them
    (shadow copies have no receiver: their caller never sees them)."""
    webhooks.jobs_ended(
        session, [webhooks.Ended(job.id, job.tenant_id, status_of(job)) for job in live if job.shadow_of is None]
    )


@dataclass(frozen=True)
class Outcome:
    """A finished job as a worker reports it: a result or an error."""

    job_id: str
    worker: str
    queue_wait_s: float
    run_time_s: float
    finished_at: datetime
    result: GenerationResult | None = None
    error: JobError | None = None
    worker_seconds: float | None = None  # its share of the batch's time (by tokens), for cost reports


def record(session: Session, outcomes: list[Outcome]) -> None:
    """Write outcomes in bulk; rows already terminal are left untouched. The rollups, the tenants'
    token counters (settled to the real count) and shadow agreement move with them."""
    by_id = {o.job_id: o for o in outcomes}
    live = transitions.lock_live(session, Job.id.in_(by_id), with_primaries_of=list(by_id)) if by_id else []
    if not live:
        return
    _write_outcomes(session, [by_id[job.id] for job in live])
    transitions.apply(session, [ended(job, by_id[job.id]) for job in live])
    announce_ended(
        session,
        [job for job in live if job.id in by_id],
        lambda job: JobStatus.SUCCEEDED.value if by_id[job.id].result is not None else JobStatus.FAILED.value,
    )
    shadows.count_agreement(
        session, [(job, result.text) for job in live if (result := by_id[job.id].result) is not None]
    )


def _write_outcomes(session: Session, outcomes: list[Outcome]) -> None:
    # Spelled out rather than IN: an expanding IN list cannot run as executemany.
    live = or_(*(Job.__table__.c.status == status for status in _LIVE))
    stmt = (
        update(Job.__table__)  # type: ignore[arg-type]
        .where(Job.__table__.c.id == bindparam("b_id"), live)
        .values(
            status=bindparam("b_status"),
            text=bindparam("b_text"),
            finish_reason=bindparam("b_finish"),
            prompt_tokens=bindparam("b_ptok"),
            completion_tokens=bindparam("b_ctok"),
            error_code=bindparam("b_ecode"),
            error_message=bindparam("b_emsg"),
            worker=bindparam("b_worker"),
            queue_wait_s=bindparam("b_wait"),
            run_time_s=bindparam("b_run"),
            worker_seconds=bindparam("b_ws"),
            finished_at=bindparam("b_fin"),
        )
    )
    params = []
    for o in outcomes:
        r, e = o.result, o.error
        params.append(
            {
                "b_id": o.job_id,
                "b_status": (JobStatus.SUCCEEDED if r else JobStatus.FAILED).value,
                "b_text": r.text if r else None,
                "b_finish": r.finish_reason.value if r else None,
                "b_ptok": r.prompt_tokens if r else None,
                "b_ctok": r.completion_tokens if r else None,
                "b_ecode": e.code if e else None,
                "b_emsg": e.message if e else None,
                "b_worker": o.worker,
                "b_wait": o.queue_wait_s,
                "b_run": o.run_time_s,
                "b_ws": o.worker_seconds,
                "b_fin": o.finished_at,
            }
        )
    session.connection().execute(stmt, params)


def ended(job: transitions.Live, outcome: Outcome) -> rollups.Change:
    """What recording ``outcome`` changes on the counters."""
    r = outcome.result
    status = JobStatus.SUCCEEDED if r else JobStatus.FAILED
    return replace(
        job.to(status.value, finished_at=outcome.finished_at),
        prompt_tokens=r.prompt_tokens if r else 0,
        completion_tokens=r.completion_tokens if r else 0,
        worker_seconds=outcome.worker_seconds,
        queue_wait_s=outcome.queue_wait_s,
        run_time_s=outcome.run_time_s,
    )


def is_terminal(status: str) -> bool:
    return status in {s.value for s in TERMINAL_STATUSES}


def _unfinished_since(older_than: datetime) -> ColumnElement[bool]:
    """Queued since before ``older_than``, or started then and not ended."""
    return or_(
        (Job.status == JobStatus.QUEUED.value) & (Job.created_at < older_than),
        (Job.status == JobStatus.RUNNING.value) & (Job.started_at < older_than),
    )


def adapters_with_stale_jobs(session: Session, *, older_than: datetime) -> list[str]:
    """Names of the adapters with a job unfinished since before ``older_than``: O(adapters with live
    work). The reconciler reads their queues to repair the backlog index, whatever the age order of
    the jobs (``stale_queued`` returns the oldest only)."""
    stale = _unfinished_since(older_than)
    rows = session.scalars(select(Adapter.name).join(Job, Job.adapter_id == Adapter.id).where(stale).distinct())
    return sorted(rows)


def stale_queued(session: Session, *, older_than: datetime, limit: int = 1000) -> list[tuple[TaskJob, int]]:
    """Jobs still unfinished since before ``older_than`` (queued then, or started then), rebuilt as the
    message that should carry them, with their priority. A job left ``running`` by a worker that gave
    up (its database was down too long) is one of them; one whose message a live worker holds is
    found by the reconciler and left alone."""
    stale = _unfinished_since(older_than)
    rows = session.execute(with_versions().where(stale).order_by(Job.created_at).limit(limit)).all()
    return [(rebuilt_task(job, name, version), job.priority) for job, name, version in rows]


def with_versions() -> Select[Job, str, AdapterVersion]:
    """Jobs with what it takes to rebuild their messages: the adapter's name and the version row."""
    return (
        select(Job, Adapter.name, AdapterVersion)
        .join(Adapter, Adapter.id == Job.adapter_id)
        .join(AdapterVersion, AdapterVersion.id == Job.version_id)
    )


def rebuilt_task(job: Job, name: str, version: AdapterVersion) -> TaskJob:
    """The message a recorded job should travel in (to publish it again)."""
    resolved = ResolvedAdapter(job.adapter_id, name, version.id, version.version, version.uri, version.sha256)
    return TaskJob.model_validate(
        task_payload(job_id=job.id, resolved=resolved, request=job.request, enqueued_at=job.created_at.timestamp())
    )
