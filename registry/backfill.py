"""Counting a database's existing jobs into the rollups online, in bounded steps, while gateways
and workers keep changing jobs.

A database upgraded across ``0006_rollups`` with jobs in it has empty rollups and a ``pending``
backfill (``RollupBackfill``). Each :func:`step` is one short transaction: it takes the state row's
lock, pages the next ``chunk`` jobs below ``floor`` in id order, newest first (ids are UUIDv7, so
today's quota counters fill first), moves ``floor`` down to the page's least id (the page is now
covered, ``registry.coverage``) and counts each job of the page as if it had just been created in
the status it has, through the same ``registry.transitions`` and ``registry.shadows`` code the
live changes use. The first step records ``high``, the greatest id then: jobs above it were created
after the backfill began and count themselves. Several gateways may step at once: the state row
serialises them, and each reads where the last one stopped.

Until it is complete the rollups hold part of the history: counts and usage reports are short,
and the tenants' token quotas see only what has been counted (the newest first). The purge waits
for it (a job deleted before it is counted would be lost from the history).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from registry import coverage, shadows, transitions
from registry.coverage import COMPLETE, PENDING, RUNNING, STATE_ID
from registry.db import transaction, write_lock
from registry.models import (
    Base,
    Job,
    JobCount,
    JobHour,
    JobMinute,
    RollupBackfill,
    ShadowAgreement,
    TenantDayTokens,
    TenantLiveJobs,
    utcnow,
)
from registry.rollups import Change
from registry.schemas import JobStatus

CHUNK = 100  # jobs per step: under 10 ms of the write lock (the requests' p99 during a backfill, bench/history.py)
ROLLUPS: tuple[type[Base], ...] = (JobCount, JobHour, JobMinute, ShadowAgreement, TenantLiveJobs, TenantDayTokens)
QUEUED = JobStatus.QUEUED.value
SUCCEEDED = JobStatus.SUCCEEDED.value


@dataclass(frozen=True)
class Progress:
    state: str
    counted: int  # jobs counted so far
    step_rows: int = 0  # jobs the last step counted

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE


def progress(session: Session) -> Progress:
    state = coverage.read(session)
    return Progress(state.state, state.counted)


def remaining(session: Session) -> int:
    """Jobs still to count (one count over the uncounted range: for progress bars, not hot paths)."""
    state = coverage.read(session)
    if state.complete:
        return 0
    query = select(func.count()).select_from(Job)
    if state.state == RUNNING:
        query = query.where(Job.id <= state.high)
        if state.floor is not None:
            query = query.where(Job.id < state.floor)
    return int(session.scalar(query) or 0)


def step(session: Session, *, chunk: int = CHUNK) -> Progress:
    """Count the next ``chunk`` jobs (in the caller's transaction, which should be short)."""
    write_lock(session)
    row = session.scalars(select(RollupBackfill).where(RollupBackfill.id == STATE_ID).with_for_update()).first()
    if row is None or row.state == COMPLETE:
        return Progress(COMPLETE, row.counted if row else 0)
    now = utcnow()
    if row.state == PENDING:
        row.state, row.started_at, row.high = RUNNING, now, session.scalar(select(func.max(Job.id)))
    page = _page(session, row, chunk) if row.high is not None else []
    if not page:
        row.state, row.finished_at = COMPLETE, now
        session.flush()
        return Progress(COMPLETE, row.counted)
    row.floor = page[-1].id
    row.counted += len(page)
    session.flush()  # the page is covered from here: the counting below is not filtered out
    transitions.apply(session, [change for job in page for change in _as_created(job)])
    # a pair is its shadow's: counted here for the page's shadows only (a primary's pairs are its shadows')
    succeeded = [(_live(job), job.text) for job in page if job.status == SUCCEEDED and job.shadow_of is not None]
    shadows.count_agreement(session, succeeded)
    return Progress(RUNNING, row.counted, len(page))


def recount(session: Session) -> None:
    """Empty the rollups and count every job again from the start (``loraq db backfill --recount``):
    the repair when code that does not keep the rollups changed jobs (an older gateway or worker left
    running through an upgrade). Jobs already purged are not in the table: their counts are lost."""
    write_lock(session)
    row = session.scalars(select(RollupBackfill).where(RollupBackfill.id == STATE_ID).with_for_update()).first()
    if row is None:
        row = RollupBackfill(id=STATE_ID, state=PENDING, counted=0)
        session.add(row)
    for model in ROLLUPS:
        session.execute(delete(model))
    row.state, row.high, row.floor, row.counted, row.started_at, row.finished_at = PENDING, None, None, 0, None, None
    session.flush()


def run(
    sessions: sessionmaker[Session],
    *,
    chunk: int = CHUNK,
    pause_s: float = 0.0,
    should_stop: Callable[[], bool] = lambda: False,
    on_step: Callable[[Progress], None] = lambda _: None,
) -> Progress:
    """Step until complete (or ``should_stop``), pausing between steps at least ``pause_s`` and at
    least as long as the last step took, so that requests and workers get the write lock in between."""
    while True:
        started = time.monotonic()
        with transaction(sessions) as session:
            done = step(session, chunk=chunk)
        on_step(done)
        if done.complete or should_stop():
            return done
        if pause_s:
            time.sleep(max(pause_s, time.monotonic() - started))


PAGE = (
    *transitions.LIVE_COLUMNS,
    Job.finished_at,
    Job.text,
    Job.prompt_tokens,
    Job.completion_tokens,
    Job.worker_seconds,
    Job.queue_wait_s,
    Job.run_time_s,
)


def _page(session: Session, row: RollupBackfill, chunk: int) -> list[Row[Any]]:
    """The next ``chunk`` job rows below ``floor``, greatest id first (the columns counted, not the
    requests and results)."""
    query = select(*PAGE).where(Job.id <= row.high)
    if row.floor is not None:
        query = query.where(Job.id < row.floor)
    return list(session.execute(query.order_by(Job.id.desc()).limit(chunk)))


def _live(job: Row[Any]) -> transitions.Live:
    return transitions.Live(*job[: len(transitions.LIVE_COLUMNS)])


def _as_created(job: Row[Any]) -> list[Change]:
    """The changes that would have brought a job from nothing to where it is: created in its status
    if live, else created queued and then moved to its status with its figures. (Built directly, not
    through ``transitions.Live.to`` and ``dataclasses.replace``: they were half a step's time.)"""
    owners = (job.id, job.tenant_id, job.adapter_id, job.version_id, job.shadow_of is not None, job.created_at)
    reserved = job.reserved_tokens or 0
    if job.status in transitions.LIVE:
        return [Change(*owners, reserved, None, job.status)]
    return [
        Change(*owners, reserved, None, QUEUED),
        Change(
            *owners,
            reserved,
            QUEUED,
            job.status,
            finished_at=job.finished_at,
            prompt_tokens=job.prompt_tokens or 0,
            completion_tokens=job.completion_tokens or 0,
            worker_seconds=job.worker_seconds,
            queue_wait_s=job.queue_wait_s,
            run_time_s=job.run_time_s,
        ),
    ]
