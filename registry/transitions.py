"""Every change of a job's status goes through here, so the rollups and the quota counters move in
the transaction that moves the job rows, and always equal a recount of the jobs table.

A change first locks the live rows it will change and reads what they were (:func:`lock_live`:
``SELECT ... FOR UPDATE`` in id order on PostgreSQL, the database's write lock on SQLite), then
changes them, then adds the differences to the counters (:func:`apply`). Every writer takes rows
in one order — job rows; then ``tenant_live_jobs``, ``tenant_day_tokens``, ``job_counts``,
``job_hours``, ``job_minutes``, ``shadow_agreement``, each in key order — so concurrent writers
neither lose an increment nor deadlock on the counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from registry import coverage, quotas, rollups
from registry.db import write_lock
from registry.models import Job, Tenant
from registry.rollups import Change
from registry.schemas import JobStatus

LIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


@dataclass(frozen=True)
class Live:
    """A live job row as it was when locked: what its change must take off the counters."""

    id: str
    status: str
    tenant_id: int
    adapter_id: int
    version_id: int
    shadow_of: str | None
    created_at: datetime
    reserved_tokens: int

    def to(self, new: str | None, *, finished_at: datetime | None = None) -> Change:
        """This job moving to ``new`` (None: deleted); an ended job's figures are added by the caller."""
        return _change(self, old=self.status, new=new, finished_at=finished_at)


LIVE_COLUMNS = (  # a Live's fields in order: ``Live(*row[: len(LIVE_COLUMNS)])``
    Job.id,
    Job.status,
    Job.tenant_id,
    Job.adapter_id,
    Job.version_id,
    Job.shadow_of,
    Job.created_at,
    Job.reserved_tokens,
)


def lock_live(
    session: Session,
    where: ColumnElement[bool],
    *,
    statuses: Sequence[str] = LIVE,
    with_primaries_of: Sequence[str] = (),
) -> list[Live]:
    """Lock and read the rows matching ``where`` whose status is in ``statuses``; they stay as read
    until the transaction ends. ``with_primaries_of``: also lock the primaries of these jobs (when
    they are shadow copies), so a primary and its shadow recorded at once are compared by exactly
    one of the two transactions (``registry.shadows``)."""
    write_lock(session)
    mine = where & Job.status.in_(statuses)
    locked: ColumnElement[bool] = mine
    if with_primaries_of:  # a job's primary never changes: read it before locking, as a list the index takes
        primaries = session.scalars(
            select(Job.shadow_of).where(Job.id.in_(with_primaries_of), Job.shadow_of.is_not(None))
        ).all()
        if primaries:
            locked = or_(mine, Job.id.in_(sorted({p for p in primaries if p is not None})))
    rows = session.execute(
        select(*LIVE_COLUMNS, mine.label("mine")).where(locked).order_by(Job.id).with_for_update()
    ).all()
    return [Live(*row[:-1]) for row in rows if row[-1]]


def created(job: Job) -> Change:
    """A job just inserted (queued)."""
    return _change(job, old=None, new=job.status)


def _change(job: Live | Job, *, old: str | None, new: str | None, finished_at: datetime | None = None) -> Change:
    return Change(
        job_id=job.id,
        tenant_id=job.tenant_id,
        adapter_id=job.adapter_id,
        version_id=job.version_id,
        shadow=job.shadow_of is not None,
        created_at=job.created_at,
        reserved_tokens=job.reserved_tokens,
        old=old,
        new=new,
        finished_at=finished_at,
    )


def admit(session: Session, *, tenant: Tenant, change: Change) -> None:
    """Count a job the tenant just submitted, if its quotas admit it (else
    :class:`~registry.errors.QuotaExceeded`, and the caller's transaction rolls the job back).
    A job the rollups do not cover yet (an id below the backfill's start) is counted by the
    backfill instead, unchecked: only ids minted on a clock behind the backfill's start can be."""
    if not coverage.covered(session, [change.job_id]):
        return
    quotas.admit(session, tenant=tenant, change=change)
    rollups.apply(session, [change])


def apply(session: Session, changes: Iterable[Change]) -> None:
    """Count changes that need no admission: bulk lines created, shadows created, jobs started,
    ended or discarded (those of jobs the rollups cover, ``registry.coverage``)."""
    changes = counted(session, changes)
    quotas.count(session, changes)
    rollups.apply(session, changes)


def counted(session: Session, changes: Iterable[Change]) -> list[Change]:
    """The changes of jobs the rollups cover; the others' are the backfill's to count."""
    changes = list(changes)
    if not changes:
        return changes
    cover = coverage.covered(session, {c.job_id for c in changes})
    return [c for c in changes if c.job_id in cover]
