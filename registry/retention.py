"""The purge: what the retention no longer keeps is deleted in short chunks, never blocking a request
or a worker for longer than one chunk.

What one pass deletes, in this order, each as a loop of transactions of at most ``chunk_rows`` rows
with a pause between them:

1. batches whose output expired (OpenAI's ``output_expires_after``, counted from when their output
   file was written): their jobs and refused lines, then the bytes of their output and error files
   (the file rows stay, marked expired, since the batch still names them);
2. with a retention (``LORAQ_RETENTION_DAYS``), everything ended before ``now - retention``: jobs
   (their ``job_webhooks`` rows go by cascade; jobs of a batch still running stay until it ends),
   ended batches without jobs left (their refused lines first), files no batch names any more
   (rows and bytes), settled webhook deliveries, and ``job_minutes`` (older history is kept per
   hour, in ``job_hours``).

Rows are deleted directly, not through ``registry.transitions``: only ended jobs go, and the rollups
are the history, so ``job_counts`` and ``job_hours`` keep counting what was purged (a recount of the
jobs table then gives less). Each deletion moves the tenant's purge mark (``registry.purge_marks``),
so a read of what is gone answers ``*_expired``. Bytes are unlinked after the rows' commit: a crash
in between leaves an orphan file, never a row without its bytes.

One gateway at a time purges (the ``purge`` lease, renewed in every chunk's transaction that
deletes); the deletes are idempotent, so a takeover that overlaps one chunk is harmless.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, delete, exists, func, or_, select, true, update
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from registry import coverage, files, leases, purge_marks
from registry.db import transaction
from registry.models import BatchLineError, BatchRow, FileRow, Job, JobMinute, WebhookDelivery, utcnow
from registry.purge_marks import Kind
from registry.schemas import JobStatus

LEASE = "purge"
TimeColumn = InstrumentedAttribute[datetime] | InstrumentedAttribute[datetime | None]
LIVE_JOBS = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
ENDED_BATCHES = ("cancelled", "completed", "expired", "failed")


@dataclass(frozen=True)
class Policy:
    """What is kept, and the purge's pace."""

    keep: timedelta | None = None  # None: ended jobs, batches and files are kept forever
    chunk_rows: int = 500  # rows per transaction
    pause_s: float = 0.025  # between transactions, at least as long as the last one: others' writes go first
    lease: timedelta = timedelta(minutes=2)  # another gateway takes over a purge silent this long

    def cutoff(self, now: datetime) -> datetime | None:
        """What ended before this is no longer kept (None: nothing goes for its age)."""
        return None if self.keep is None else now - self.keep


@dataclass
class Purged:
    """What one pass deleted; ``finished`` is False when it stopped early (lease lost, asked to stop)."""

    jobs: int = 0
    batches: int = 0
    files: int = 0
    deliveries: int = 0
    minutes: int = 0
    expired_outputs: int = 0  # batches whose output files expired
    chunks: int = 0
    finished: bool = True
    waiting_for_backfill: bool = False  # nothing purged: the rollups do not hold the history yet

    @property
    def rows(self) -> int:
        return self.jobs + self.batches + self.files + self.deliveries + self.minutes


@dataclass
class Step:
    """One chunk's transaction: rows deleted, bytes to unlink after the commit, whether to go on."""

    rows: int = 0
    more: bool = False
    paths: list[Path] = field(default_factory=list)


@dataclass
class Cursor:
    """Where a loop over a time index stands: each chunk starts where the last one ended, not at the
    index's start, so it never walks again over what it deleted (PostgreSQL keeps deleted entries in
    its indexes until a vacuum: starting over made a million-row purge quadratic). A pass that left
    rows behind (jobs of a running batch) starts over next time."""

    after: datetime | None = None

    def since(self, column: TimeColumn) -> ColumnElement[bool]:
        return true() if self.after is None else column >= self.after


class LeaseLost(Exception):
    """Another gateway holds the purge lease."""


class Purge:
    """One pass of the purge (``run``); the gateway's purger calls it about once a minute.

    Each step reads what it will delete first and takes the lease (a write) just before its first
    delete: on SQLite the write lock is then held for the deletes alone, not for the reads that
    found them (pysqlite begins a transaction at its first write), and a pass with nothing to delete
    writes nothing at all.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        policy: Policy,
        owner: str,
        stop: threading.Event | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.policy = policy
        self.owner = owner
        self.stop = stop or threading.Event()
        self.clock = clock
        self._held = False

    def run(self, now: datetime | None = None) -> Purged:
        """Delete what ``policy`` no longer keeps at ``now`` (default: the clock)."""
        now = now or self.clock()
        out = Purged()
        self._held = False
        if not self._history_counted():
            out.waiting_for_backfill = True
            return out
        try:
            self._loop(out, lambda s: self._expire_output(s, now, out))
            cutoff = self.policy.cutoff(now)
            if cutoff is not None:
                jobs, deliveries, minutes = Cursor(), Cursor(), Cursor()
                self._loop(out, lambda s: self._jobs(s, cutoff, out, jobs))
                self._loop(out, lambda s: self._batches(s, cutoff, out))
                self._loop(out, lambda s: self._files(s, cutoff, out))
                self._loop(out, lambda s: self._deliveries(s, cutoff, out, deliveries))
                self._loop(out, lambda s: self._minutes(s, cutoff, out, minutes))
        except LeaseLost:
            out.finished = False
        if out.finished and self._held:
            with transaction(self.sessions) as session:
                leases.release(session, name=LEASE, owner=self.owner)
        return out

    def _history_counted(self) -> bool:
        """Whether the rollups hold every job's counts (``registry.backfill``): until then a job
        deleted would be lost from the history, so nothing is purged (an expired batch output's jobs
        included)."""
        with transaction(self.sessions) as session:
            return coverage.read(session).complete

    def _loop(self, out: Purged, step: Callable[[Session], Step]) -> None:
        while out.finished:
            if self.stop.is_set():
                out.finished = False
                return
            started = time.monotonic()
            with transaction(self.sessions) as session:
                done = step(session)
            busy = time.monotonic() - started
            for path in done.paths:
                path.unlink(missing_ok=True)
            if done.rows:
                out.chunks += 1
            if not done.more:
                return
            self.stop.wait(max(self.policy.pause_s, busy))  # busy at most half the time, whatever the load

    def _hold(self, session: Session) -> None:
        """Take or renew the purge lease in this chunk's transaction, before its first delete."""
        if not leases.claim(session, name=LEASE, owner=self.owner, now=utcnow(), duration=self.policy.lease):
            raise LeaseLost(LEASE)
        self._held = True

    # --- the steps: each one transaction, at most chunk_rows rows -----------------------------

    def _expire_output(self, session: Session, now: datetime, out: Purged) -> Step:
        """The next batch whose output expired: its jobs, then its refused lines, then its files."""
        batch = session.execute(
            select(BatchRow.id, BatchRow.output_file_id, BatchRow.error_file_id)
            .where(BatchRow.output_expires_at <= now)
            .order_by(BatchRow.output_expires_at)
            .limit(1)
        ).first()
        if batch is None:
            return Step()
        rows = session.execute(
            select(Job.id, Job.tenant_id).where(Job.batch_id == batch.id, _ended()).limit(self.policy.chunk_rows)
        ).all()
        gone = self._delete_jobs(session, [(job_id, tenant_id) for job_id, tenant_id in rows])
        out.jobs += gone
        if not gone:
            gone = self._delete_line_errors(session, batch.id)
        if gone:
            return Step(rows=gone, more=True)
        self._hold(session)
        paths = _expire_files(session, [batch.output_file_id, batch.error_file_id])
        session.execute(update(BatchRow).where(BatchRow.id == batch.id).values(output_expires_at=None))
        out.expired_outputs += 1
        return Step(rows=1, more=True, paths=paths)

    def _jobs(self, session: Session, cutoff: datetime, out: Purged, cursor: Cursor) -> Step:
        """The oldest ended jobs, but those of a batch still running (its output is not written yet).
        The running batches are read first, as a list: a NOT EXISTS per job made PostgreSQL
        misjudge the rows left and scan the table."""
        running = session.scalars(select(BatchRow.id).where(BatchRow.status.not_in(ENDED_BATCHES))).all()
        query = select(Job.id, Job.tenant_id, Job.finished_at).where(
            Job.finished_at < cutoff, cursor.since(Job.finished_at), _ended()
        )
        if running:
            query = query.where(or_(Job.batch_id.is_(None), Job.batch_id.not_in(running)))
        rows = session.execute(query.order_by(Job.finished_at).limit(self.policy.chunk_rows)).all()
        if rows:
            cursor.after = rows[-1].finished_at
        gone = self._delete_jobs(session, [(job_id, tenant_id) for job_id, tenant_id, _ in rows])
        out.jobs += gone
        return Step(rows=gone, more=gone == self.policy.chunk_rows)

    def _delete_jobs(self, session: Session, rows: Sequence[tuple[str, int]]) -> int:
        """Delete these ended jobs (id, tenant) and move their tenants' marks."""
        if not rows:
            return 0
        self._hold(session)
        # by id alone: an ended job is never written again, and a status test would lead SQLite's
        # planner to the status index
        session.execute(
            delete(Job).where(Job.id.in_([job_id for job_id, _ in rows])).execution_options(synchronize_session=False)
        )
        _mark(session, Kind.JOB, rows)
        return len(rows)

    def _delete_line_errors(self, session: Session, batch_id: str) -> int:
        ids = session.scalars(
            select(BatchLineError.id).where(BatchLineError.batch_id == batch_id).limit(self.policy.chunk_rows)
        ).all()
        if ids:
            self._hold(session)
            session.execute(delete(BatchLineError).where(BatchLineError.id.in_(ids)))
        return len(ids)

    def _batches(self, session: Session, cutoff: datetime, out: Purged) -> Step:
        """The next ended batch older than the cutoff whose jobs are gone: its refused lines, then it."""
        ended_at = func.coalesce(BatchRow.completed_at, BatchRow.failed_at, BatchRow.expired_at, BatchRow.cancelled_at)
        batch = session.execute(
            select(BatchRow.id, BatchRow.tenant_id)
            .where(
                BatchRow.status.in_(ENDED_BATCHES),
                ended_at < cutoff,
                ~exists().where(Job.batch_id == BatchRow.id),
            )
            .limit(1)
        ).first()
        if batch is None:
            return Step()
        gone = self._delete_line_errors(session, batch.id)
        if not gone:
            self._hold(session)
            session.execute(delete(BatchRow).where(BatchRow.id == batch.id, BatchRow.status.in_(ENDED_BATCHES)))
            purge_marks.record(session, tenant_id=batch.tenant_id, kind=Kind.BATCH, object_ids=[batch.id])
            out.batches += 1
        return Step(rows=gone or 1, more=True)

    def _files(self, session: Session, cutoff: datetime, out: Purged) -> Step:
        """Files older than the cutoff that no batch names (their batches were purged, or never were)."""
        named = exists().where(
            or_(
                BatchRow.input_file_id == FileRow.id,
                BatchRow.output_file_id == FileRow.id,
                BatchRow.error_file_id == FileRow.id,
            )
        )
        rows = session.execute(
            select(FileRow.id, FileRow.tenant_id, FileRow.storage_uri)
            .where(FileRow.created_at < cutoff, ~named)
            .limit(self.policy.chunk_rows)
        ).all()
        if not rows:
            return Step()
        self._hold(session)
        session.execute(
            delete(FileRow)
            .where(FileRow.id.in_([file_id for file_id, _, _ in rows]), ~named)
            .execution_options(synchronize_session=False)
        )
        _mark(session, Kind.FILE, [(file_id, tenant_id) for file_id, tenant_id, _ in rows])
        out.files += len(rows)
        paths = [files.path_of_uri(uri) for _, _, uri in rows if files.has_bytes(uri)]
        return Step(rows=len(rows), more=len(rows) == self.policy.chunk_rows, paths=paths)

    def _deliveries(self, session: Session, cutoff: datetime, out: Purged, cursor: Cursor) -> Step:
        """Settled webhook deliveries (delivered or given up) created before the cutoff."""
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.created_at)
            .where(
                WebhookDelivery.created_at < cutoff,
                cursor.since(WebhookDelivery.created_at),
                WebhookDelivery.status != "pending",
            )
            .order_by(WebhookDelivery.created_at)
            .limit(self.policy.chunk_rows)
        ).all()
        if rows:
            cursor.after = rows[-1].created_at
            self._hold(session)
            session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_([row.id for row in rows])))
        out.deliveries += len(rows)
        return Step(rows=len(rows), more=len(rows) == self.policy.chunk_rows)

    def _minutes(self, session: Session, cutoff: datetime, out: Purged, cursor: Cursor) -> Step:
        """Minute buckets before the cutoff, oldest first, about ``chunk_rows`` at a time (whole minutes)."""
        old = (
            select(JobMinute.bucket)
            .where(JobMinute.bucket < cutoff, cursor.since(JobMinute.bucket))
            .order_by(JobMinute.bucket)
            .limit(1)
        )
        if session.scalar(old) is None:
            return Step()
        last = session.scalar(old.offset(self.policy.chunk_rows - 1))
        self._hold(session)
        upto = JobMinute.bucket < cutoff if last is None else JobMinute.bucket <= last
        gone = int(session.execute(delete(JobMinute).where(upto, JobMinute.bucket < cutoff)).rowcount)  # type: ignore[attr-defined]
        out.minutes += gone
        cursor.after = last
        return Step(rows=gone, more=last is not None)


def _ended() -> ColumnElement[bool]:
    """Ended, written ``status NOT IN (live)``: SQLite, without statistics, would read ``status IN
    (ended)`` through the status index, the whole table's worth."""
    return Job.status.not_in(LIVE_JOBS)


def _mark(session: Session, kind: Kind, rows: Iterable[tuple[str, int]]) -> None:
    by_tenant: dict[int, list[str]] = {}
    for object_id, tenant_id in rows:
        by_tenant.setdefault(tenant_id, []).append(object_id)
    for tenant_id, object_ids in sorted(by_tenant.items()):
        purge_marks.record(session, tenant_id=tenant_id, kind=kind, object_ids=object_ids)


def _expire_files(session: Session, file_ids: Sequence[str | None]) -> list[Path]:
    """Mark a batch's output files expired (the batch keeps naming them); returns their bytes' paths."""
    wanted = [file_id for file_id in file_ids if file_id is not None]
    if not wanted:
        return []
    uris = session.scalars(select(FileRow.storage_uri).where(FileRow.id.in_(wanted))).all()
    session.execute(
        update(FileRow)
        .where(FileRow.id.in_(wanted))
        .values(storage_uri=files.EXPIRED)
        .execution_options(synchronize_session=False)
    )
    return [files.path_of_uri(uri) for uri in uris if files.has_bytes(uri)]
