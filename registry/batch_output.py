"""A batch's end: its output and error files, assembled from the job rows, and its final status.

Both files are written in line order, streamed from the database a page at a
time (a 100k-line batch never sits in memory), to a temporary file renamed
into place; only then does the batch name them and take its final status, in
one transaction. A gateway that dies while finalizing leaves the batch
``finalizing`` and the next pass writes the files again.

A batch created with ``output_expires_after`` gets its purge time here, counted from when its files
were written (OpenAI's anchor); ``registry.retention`` deletes them, and its jobs, then.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from registry import batch_lines, batches, files
from registry.batch_lines import error_line, failed_line, output_line
from registry.models import BatchLineError, BatchRow, FileRow, Job, utcnow
from registry.schemas import FinishReason, GenerationResult, JobStatus

_ENDED_UNRUN = {"cancelled": "batch_cancelled", "expired": "batch_expired"}


def finalize(session: Session, *, batch: BatchRow, files_dir: Path, max_bytes: int) -> BatchRow:
    """Write the files and end the batch (the caller commits)."""
    now = utcnow()
    batch.status, batch.finalizing_at = "finalizing", batch.finalizing_at or now
    session.flush()
    seen = batches.progress(session, batch_id=batch.id)
    final = batches.final_status(batch, had_jobs=seen.completed + seen.failed > seen.refused)
    if seen.completed:
        batch.output_file_id = files.store(
            session,
            tenant_id=batch.tenant_id,
            filename=f"{batch.id}_output.jsonl",
            purpose=files.OUTPUT_PURPOSE,
            chunks=_outputs(session, batch),
            files_dir=files_dir,
            max_bytes=max_bytes,
        ).id
    if seen.failed:
        batch.error_file_id = files.store(
            session,
            tenant_id=batch.tenant_id,
            filename=f"{batch.id}_error.jsonl",
            purpose=files.OUTPUT_PURPOSE,
            chunks=_errors(session, batch, unrun_code=_ENDED_UNRUN.get(final, "batch_cancelled")),
            files_dir=files_dir,
            max_bytes=max_bytes,
        ).id
    batch.completed, batch.failed = seen.completed, seen.failed
    batch.status = final
    if batch.output_expires_s is not None:  # OpenAI's anchor: the files' creation, now
        batch.output_expires_at = now + timedelta(seconds=batch.output_expires_s)
        for file_id in (batch.output_file_id, batch.error_file_id):
            row = session.get(FileRow, file_id) if file_id else None
            if row is not None:
                row.expires_at = batch.output_expires_at  # what GET /v1/files/{id} tells the client
    stamp = {"completed": "completed_at", "failed": "failed_at", "expired": "expired_at", "cancelled": "cancelled_at"}
    if getattr(batch, stamp[final]) is None:
        setattr(batch, stamp[final], now)
    if final == "failed":
        batch.errors = {"object": "list", "data": [{"code": "no_valid_lines", "message": _no_valid_lines(batch)}]}
    session.flush()
    return batch


def _no_valid_lines(batch: BatchRow) -> str:
    return f"no line of {batch.input_file_id} could run; the error file says why for each."


def _model(job: Job) -> str:
    return str(job.request.get("adapter", ""))


def _outputs(session: Session, batch: BatchRow) -> Iterator[bytes]:
    for job in batches.jobs_in_order(session, batch_id=batch.id, statuses=[JobStatus.SUCCEEDED.value]):
        result = GenerationResult(
            text=job.text or "",
            finish_reason=FinishReason(job.finish_reason or "stop"),
            prompt_tokens=job.prompt_tokens or 0,
            completion_tokens=job.completion_tokens or 0,
        )
        created = int((job.finished_at or job.created_at).timestamp())
        line = output_line(
            endpoint=batch.endpoint,
            job_id=job.id,
            custom_id=job.custom_id or "",
            model=_model(job),
            created=created,
            result=result,
        )
        yield line + b"\n"


def _errors(session: Session, batch: BatchRow, *, unrun_code: str) -> Iterator[bytes]:
    ended = batches.jobs_in_order(
        session, batch_id=batch.id, statuses=[JobStatus.FAILED.value, JobStatus.CANCELLED.value]
    )
    refused = batches.line_errors_in_order(session, batch_id=batch.id)
    keyed_jobs: Iterator[tuple[int, int, Job | BatchLineError]] = ((j.line_no or 0, 1, j) for j in ended)
    keyed_errors: Iterator[tuple[int, int, Job | BatchLineError]] = ((e.line_no, 0, e) for e in refused)
    merged = heapq.merge(keyed_jobs, keyed_errors, key=lambda t: (t[0], t[1]))
    for line_no, _, item in merged:
        yield _error_of(batch, line_no, item, unrun_code=unrun_code) + b"\n"


def _error_of(batch: BatchRow, line_no: int, item: Job | BatchLineError, *, unrun_code: str) -> bytes:
    if isinstance(item, BatchLineError):
        line_id = batch_lines.request_id(batch_lines.job_id_for(batch.id, line_no))
        return error_line(line_id=line_id, custom_id=item.custom_id, code=item.code, message=item.message)
    if item.status == JobStatus.CANCELLED.value:
        message = (
            "the batch was cancelled before this request ran"
            if unrun_code == "batch_cancelled"
            else ("the batch's completion window ended before this request ran")
        )
        return error_line(
            line_id=batch_lines.request_id(item.id), custom_id=item.custom_id, code=unrun_code, message=message
        )
    return failed_line(
        job_id=item.id,
        custom_id=item.custom_id or "",
        code=item.error_code or "failed",
        message=item.error_message or "the request failed",
    )
