"""Batch repository: the OpenAI Batch API's batches over loraq's jobs.

A batch's lines become job rows (one per good line, id derived from the
batch id and line number) and line errors (one per refused line). Ingest is
resumable and exactly-once: each chunk's rows and the batch's read position
move in one transaction, guarded by the position it started from and the
ingesting gateway's lease, so a gateway killed mid-ingest loses nothing and a
second one cannot insert the same lines again. ``published_lines`` trails
``ingested_lines`` until the chunk's messages are in Redis; a resumed ingest
first re-publishes that gap (a message sent twice runs once: recording is
exactly-once).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, insert, or_, select, update
from sqlalchemy.orm import Session

from registry import ids, purge_marks, transitions
from registry.adapters import ResolvedAdapter
from registry.batch_lines import BatchLine, LineError
from registry.errors import Conflict, InvalidRequest, NotFound
from registry.files import get as get_file
from registry.jobs import rebuilt_task, task_payload, with_versions
from registry.models import BatchLineError, BatchRow, Job, Tenant, utcnow
from registry.openai_schemas import ENDPOINTS
from registry.rollups import Change
from registry.schemas import JobStatus, Priority

_WINDOW = re.compile(r"^([1-9][0-9]{0,2})h$")
MAX_WINDOW_H = 168
ACTIVE = ("validating", "in_progress")  # lines may still be read
DRAINING = ("in_progress", "cancelling")  # waiting for jobs to end
_LIVE_JOBS = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


def new_batch_id() -> str:
    """``batch_`` and a version 7 UUID's hex: its creation time is in it, and in its lines' job ids."""
    return f"batch_{ids.uuid7().hex}"


def visible_batches(tenant: Tenant) -> Select[BatchRow]:
    query = select(BatchRow)
    return query if tenant.is_admin else query.where(BatchRow.tenant_id == tenant.id)


def window_hours(window: str) -> int:
    match = _WINDOW.match(window)
    if match is None or int(match.group(1)) > MAX_WINDOW_H:
        raise InvalidRequest(
            f"completion_window {window!r} is not served; give hours such as '24h' (at most {MAX_WINDOW_H}h).",
            code="invalid_completion_window",
        )
    return int(match.group(1))


def create(
    session: Session,
    *,
    tenant: Tenant,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    output_expires_s: int | None = None,
) -> BatchRow:
    """Record a batch ``validating``. ``output_expires_s``: its output and error files, and its
    jobs, are purged this long after the files are written (OpenAI's ``output_expires_after``)."""
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint {endpoint!r} is not served in batches; use one of {', '.join(ENDPOINTS)}.",
            code="invalid_endpoint",
        )
    hours = window_hours(completion_window)
    source = get_file(session, tenant=tenant, file_id=input_file_id)
    if source.purpose != "batch":
        raise InvalidRequest(
            f"file {input_file_id!r} has purpose {source.purpose!r}; upload the input with purpose 'batch'.",
            code="invalid_input_file",
        )
    now = utcnow()
    row = BatchRow(
        id=new_batch_id(),
        tenant_id=tenant.id,
        endpoint=endpoint,
        completion_window=completion_window,
        status="validating",
        input_file_id=source.id,
        metadata_=metadata,
        output_expires_s=output_expires_s,
        created_at=now,
        expires_at=now + timedelta(hours=hours),
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, *, tenant: Tenant, batch_id: str) -> BatchRow:
    row = session.scalar(visible_batches(tenant).where(BatchRow.id == batch_id))
    if row is None:
        if purge_marks.expired(session, tenant=tenant, kind=purge_marks.Kind.BATCH, object_id=batch_id):
            raise NotFound(
                f"batch {batch_id!r} has expired: it ended longer ago than the retention (LORAQ_RETENTION_DAYS) "
                "and was deleted with its files.",
                code="batch_expired",
            )
        raise NotFound(f"batch {batch_id!r} does not exist; GET /v1/batches lists yours.", code="batch_not_found")
    return row


def list_for(session: Session, *, tenant: Tenant, after: str | None, limit: int) -> list[BatchRow]:
    """Newest first; ``after`` is the last id of the previous page (OpenAI's cursor)."""
    query = visible_batches(tenant)
    if after is not None:
        anchor = get(session, tenant=tenant, batch_id=after)
        query = query.where(
            or_(
                BatchRow.created_at < anchor.created_at,
                (BatchRow.created_at == anchor.created_at) & (BatchRow.id < anchor.id),
            )
        )
    return list(session.scalars(query.order_by(BatchRow.created_at.desc(), BatchRow.id.desc()).limit(limit)))


def cancel(session: Session, *, tenant: Tenant, batch_id: str) -> BatchRow:
    """Stop reading the file and cancel every queued job; running ones finish, then the
    batch ends ``cancelled`` with what completed in its output file."""
    row = get(session, tenant=tenant, batch_id=batch_id)
    if row.status in ("cancelling", "cancelled"):
        return row
    if row.status not in ACTIVE:
        raise Conflict(f"batch {batch_id!r} already ended ({row.status}).", code="batch_not_cancellable")
    now = utcnow()
    session.execute(
        update(BatchRow)
        .where(BatchRow.id == row.id)
        .values(status="cancelling", cancelling_at=now, ingest_done=True)
        .execution_options(synchronize_session="fetch")
    )
    cancel_queued_jobs(session, batch_id=row.id)
    session.refresh(row)
    return row


def cancel_queued_jobs(session: Session, *, batch_id: str) -> int:
    queued = transitions.lock_live(session, Job.batch_id == batch_id, statuses=[JobStatus.QUEUED.value])
    if not queued:
        return 0
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.batch_id == batch_id, Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.CANCELLED.value, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    transitions.apply(session, [job.to(JobStatus.CANCELLED.value, finished_at=now) for job in queued])
    return len(queued)


# --- ingest ---------------------------------------------------------------------------------


def to_ingest(session: Session) -> list[str]:
    """Batches whose file is not fully read yet, oldest first."""
    rows = session.scalars(
        select(BatchRow.id)
        .where(BatchRow.status.in_(ACTIVE), BatchRow.ingest_done.is_(False))
        .order_by(BatchRow.created_at)
    )
    return list(rows)


def claim(session: Session, *, batch_id: str, owner: str, lease_s: float) -> BatchRow | None:
    """Take (or renew) the ingest lease; None when another gateway holds it."""
    now = utcnow()
    taken = session.execute(
        update(BatchRow)
        .where(
            BatchRow.id == batch_id,
            BatchRow.status.in_(ACTIVE),
            BatchRow.ingest_done.is_(False),
            or_(BatchRow.lease_owner.is_(None), BatchRow.lease_owner == owner, BatchRow.lease_until < now),
        )
        .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(BatchRow, batch_id, populate_existing=True)


def known_custom_ids(session: Session, *, batch_id: str) -> set[str]:
    """custom_ids already taken by ingested lines (to refuse duplicates after a resume)."""
    jobs = session.scalars(select(Job.custom_id).where(Job.batch_id == batch_id))
    return {c for c in jobs if c is not None}


@dataclass(frozen=True)
class Chunk:
    """Lines read from ``start_offset`` up to ``end_offset`` (bytes), lines ``[start_line, end_line)``."""

    start_offset: int
    end_offset: int
    end_line: int
    eof: bool
    lines: Sequence[tuple[BatchLine, ResolvedAdapter]]
    errors: Sequence[LineError]


class LeaseLost(Exception):
    """Another gateway moved the batch on (or it was cancelled); stop ingesting it."""


def commit_chunk(
    session: Session, *, batch: BatchRow, owner: str, lease_s: float, chunk: Chunk
) -> list[dict[str, Any]]:
    """Record a chunk's jobs and line errors and advance the read position, all or nothing.
    Returns the jobs to publish, as :class:`TaskJob` payloads."""
    now = utcnow()
    moved = session.execute(
        update(BatchRow)
        .where(
            BatchRow.id == batch.id,
            BatchRow.ingest_offset == chunk.start_offset,
            BatchRow.lease_owner == owner,
            BatchRow.status.in_(ACTIVE),
        )
        .values(
            ingest_offset=chunk.end_offset,
            ingested_lines=chunk.end_line,
            ingest_done=chunk.eof,
            total=BatchRow.total + len(chunk.lines) + len(chunk.errors),
            failed=BatchRow.failed + len(chunk.errors),
            status="in_progress",
            in_progress_at=func.coalesce(BatchRow.in_progress_at, now),
            lease_until=now + timedelta(seconds=lease_s),
        )
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(batch.id)
    rows = [_job_row(batch, line, resolved, now) for line, resolved in chunk.lines]
    if rows:  # Core, not ORM: no identity map for rows this transaction never reads
        session.connection().execute(insert(Job), rows)
        transitions.apply(session, [_created(row) for row in rows])
    if chunk.errors:
        session.connection().execute(
            insert(BatchLineError),
            [
                {
                    "batch_id": batch.id,
                    "line_no": e.line_no,
                    "custom_id": e.custom_id,
                    "code": e.code,
                    "message": e.message,
                }
                for e in chunk.errors
            ],
        )
    enqueued = now.timestamp()
    return [
        task_payload(job_id=row["id"], resolved=resolved, request=row["request"], enqueued_at=enqueued)
        for row, (_, resolved) in zip(rows, chunk.lines, strict=True)
    ]


def _job_row(batch: BatchRow, line: BatchLine, resolved: ResolvedAdapter, now: datetime) -> dict[str, Any]:
    job = line.job
    return {
        "id": line.job_id,
        "tenant_id": batch.tenant_id,
        "adapter_id": resolved.adapter_id,
        "version_id": resolved.version_id,
        "status": JobStatus.QUEUED.value,
        "priority": int(Priority.BULK),
        "request": job.model_dump(mode="json", exclude_defaults=True),
        "routing_key": job.routing_key,
        "batch_id": batch.id,
        "custom_id": line.custom_id,
        "line_no": line.line_no,
        "attempts": 0,
        "created_at": now,
    }


def _created(row: dict[str, Any]) -> Change:
    """A bulk line's job just inserted: it counts as live, and reserves no tokens (``registry.quotas``)."""
    return Change(
        job_id=row["id"],
        tenant_id=row["tenant_id"],
        adapter_id=row["adapter_id"],
        version_id=row["version_id"],
        shadow=False,
        created_at=row["created_at"],
        reserved_tokens=0,
        old=None,
        new=row["status"],
    )


def mark_published(session: Session, *, batch_id: str, upto_line: int) -> None:
    session.execute(
        update(BatchRow)
        .where(BatchRow.id == batch_id, BatchRow.published_lines < upto_line)
        .values(published_lines=upto_line)
        .execution_options(synchronize_session=False)
    )


def unpublished(session: Session, *, batch: BatchRow) -> list[dict[str, Any]]:
    """Queued jobs of lines ingested but not known to be published (a gateway died in between)."""
    rows = session.execute(
        with_versions()
        .where(
            Job.batch_id == batch.id,
            Job.status == JobStatus.QUEUED.value,
            Job.line_no >= batch.published_lines,
            Job.line_no < batch.ingested_lines,
        )
        .order_by(Job.line_no)
    ).all()
    return [rebuilt_task(job, name, v).model_dump(mode="json", exclude_defaults=True) for job, name, v in rows]


# --- progress and the end -------------------------------------------------------------------


def to_watch(session: Session) -> list[str]:
    return list(session.scalars(select(BatchRow.id).where(BatchRow.status.in_(DRAINING))))


@dataclass(frozen=True)
class Progress:
    completed: int
    failed: int  # failed, cancelled and refused at ingest
    live: int
    refused: int  # lines refused at ingest (no job row)


def progress(session: Session, *, batch_id: str) -> Progress:
    counts = dict(
        session.execute(select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)).all()
    )
    refused = session.scalar(select(func.count()).where(BatchLineError.batch_id == batch_id)) or 0
    return Progress(
        completed=int(counts.get(JobStatus.SUCCEEDED.value, 0)),
        failed=int(counts.get(JobStatus.FAILED.value, 0) + counts.get(JobStatus.CANCELLED.value, 0) + refused),
        live=int(sum(counts.get(s, 0) for s in _LIVE_JOBS)),
        refused=int(refused),
    )


def record_progress(session: Session, *, batch: BatchRow, now: datetime) -> Progress:
    """Update request_counts; past its window, an unfinished batch starts expiring."""
    seen = progress(session, batch_id=batch.id)
    batch.completed, batch.failed = seen.completed, seen.failed
    if batch.status == "in_progress" and batch.expires_at is not None and now >= batch.expires_at:
        batch.status, batch.expired_at, batch.ingest_done = "cancelling", now, True
        cancel_queued_jobs(session, batch_id=batch.id)
        seen = progress(session, batch_id=batch.id)
    return seen


def final_status(batch: BatchRow, *, had_jobs: bool) -> str:
    if batch.expired_at is not None:
        return "expired"
    if batch.cancelling_at is not None:
        return "cancelled"
    return "completed" if had_jobs else "failed"


def jobs_in_order(session: Session, *, batch_id: str, statuses: Sequence[str]) -> Iterator[Job]:
    yield from session.scalars(
        select(Job)
        .where(Job.batch_id == batch_id, Job.status.in_(statuses))
        .order_by(Job.line_no)
        .execution_options(yield_per=1000)
    )


def line_errors_in_order(session: Session, *, batch_id: str) -> Iterator[BatchLineError]:
    yield from session.scalars(
        select(BatchLineError)
        .where(BatchLineError.batch_id == batch_id)
        .order_by(BatchLineError.line_no)
        .execution_options(yield_per=1000)
    )


def view(row: BatchRow) -> dict[str, Any]:
    """The batch object, as OpenAI's API returns it (timestamps in epoch seconds)."""

    def ts(value: datetime | None) -> int | None:
        return int(value.timestamp()) if value is not None else None

    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": row.errors,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": ts(row.created_at),
        "in_progress_at": ts(row.in_progress_at),
        "expires_at": ts(row.expires_at),
        "finalizing_at": ts(row.finalizing_at),
        "completed_at": ts(row.completed_at),
        "failed_at": ts(row.failed_at),
        "expired_at": ts(row.expired_at),
        "cancelling_at": ts(row.cancelling_at),
        "cancelled_at": ts(row.cancelled_at),
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "metadata": row.metadata_,
    }
