"""Batches and files on each database: ingest chunks land once, leases exclude, the end writes both files."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from registry import batches, files
from registry.adapters import Resolver
from registry.batch_lines import BatchLine, LineError, job_id_for, parse_line
from registry.batch_output import finalize
from registry.db import transaction
from registry.errors import Conflict, InvalidRequest, NotFound, TooLarge
from registry.jobs import Outcome, record
from registry.models import BatchRow, Job, utcnow
from registry.openai_schemas import COMPLETIONS
from registry.schemas import FinishReason, GenerationResult, JobError
from tests.registry.test_adapters_and_jobs import World, register


def new_batch(session: Session, world: World, tmp_path: Path, lines: list[bytes]) -> BatchRow:
    register(session, world, "upper")
    data = b"\n".join(lines) + b"\n"
    source = files.upload(
        session,
        tenant=world.acme,
        filename="in.jsonl",
        purpose="batch",
        stream=io.BytesIO(data),
        files_dir=tmp_path,
        max_bytes=1 << 20,
    )
    return batches.create(
        session,
        tenant=world.acme,
        input_file_id=source.id,
        endpoint=COMPLETIONS,
        completion_window="24h",
        metadata=None,
    )


def completion(custom_id: str, prompt: str = "hi") -> bytes:
    body = {"model": "upper", "prompt": prompt, "max_tokens": 8}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": COMPLETIONS, "body": body})


def chunk_of(session: Session, world: World, batch: BatchRow, lines: list[bytes], *, start: int = 0) -> batches.Chunk:
    parsed = [parse_line(raw, batch_id=batch.id, line_no=i, endpoint=COMPLETIONS) for i, raw in enumerate(lines)]
    resolve = Resolver(session, tenant=world.acme)
    good = [(p, resolve(p.job.adapter, p.job_id)) for p in parsed if isinstance(p, BatchLine)]
    errors = [p for p in parsed if isinstance(p, LineError)]
    size = sum(len(raw) + 1 for raw in lines)
    return batches.Chunk(
        start_offset=start, end_offset=start + size, end_line=len(lines), eof=True, lines=good, errors=errors
    )


def test_a_chunk_is_recorded_once_and_a_second_gateway_cannot_take_a_held_lease(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    lines = [completion("a"), completion("b"), b"{bad"]
    with transaction(session_factory) as s:
        batch = new_batch(s, world, tmp_path, lines)
    with transaction(session_factory) as s:
        held = batches.claim(s, batch_id=batch.id, owner="gw-a", lease_s=30)
        assert held is not None
        assert batches.claim(s, batch_id=batch.id, owner="gw-b", lease_s=30) is None
        tasks = batches.commit_chunk(s, batch=held, owner="gw-a", lease_s=30, chunk=chunk_of(s, world, held, lines))
    assert [t["job_id"] for t in tasks] == [job_id_for(batch.id, 0), job_id_for(batch.id, 1)]
    with pytest.raises(batches.LeaseLost), transaction(session_factory) as s:  # the same chunk again
        again = s.get(BatchRow, batch.id)
        assert again is not None
        batches.commit_chunk(s, batch=again, owner="gw-a", lease_s=30, chunk=chunk_of(s, world, again, lines))
    with session_factory() as s:
        row = s.get(BatchRow, batch.id)
        assert row is not None
        assert (row.status, row.total, row.failed, row.ingested_lines, row.ingest_done) == (
            "in_progress",
            3,
            1,
            3,
            True,
        )
        assert s.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch.id)) == 2
        assert len(batches.unpublished(s, batch=row)) == 2  # recorded, not yet known published


def test_an_expired_lease_is_taken_over(session_factory: sessionmaker[Session], world: World, tmp_path: Path) -> None:
    with transaction(session_factory) as s:
        batch = new_batch(s, world, tmp_path, [completion("a")])
    with transaction(session_factory) as s:
        assert batches.claim(s, batch_id=batch.id, owner="gw-a", lease_s=-1) is not None  # died at once
    with transaction(session_factory) as s:
        assert batches.claim(s, batch_id=batch.id, owner="gw-b", lease_s=30) is not None


def test_cancel_cancels_queued_jobs_and_stops_the_ingest(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    lines = [completion("a"), completion("b")]
    with transaction(session_factory) as s:
        batch = new_batch(s, world, tmp_path, lines)
        held = batches.claim(s, batch_id=batch.id, owner="gw-a", lease_s=30)
        assert held is not None
        first = chunk_of(s, world, held, lines[:1])
        batches.commit_chunk(
            s, batch=held, owner="gw-a", lease_s=30, chunk=first.__class__(**{**first.__dict__, "eof": False})
        )
    with transaction(session_factory) as s:
        cancelled = batches.cancel(s, tenant=world.acme, batch_id=batch.id)
        assert (cancelled.status, cancelled.ingest_done) == ("cancelling", True)
    with transaction(session_factory) as s:
        assert s.scalar(select(Job.status).where(Job.batch_id == batch.id)) == "cancelled"
        with pytest.raises(NotFound):
            batches.cancel(s, tenant=world.globex, batch_id=batch.id)
        row = s.get(BatchRow, batch.id)
        assert row is not None
        finalize(s, batch=row, files_dir=tmp_path, max_bytes=1 << 20)
        assert (row.status, row.completed, row.failed, row.output_file_id) == ("cancelled", 0, 1, None)
        assert batches.cancel(s, tenant=world.acme, batch_id=batch.id).status == "cancelled"  # idempotent
        assert batches.cancel.__name__


def test_finalize_writes_outputs_and_errors_in_line_order(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    lines = [completion("c0", "one"), b"nope", completion("c2", "two"), completion("c3", "three")]
    with transaction(session_factory) as s:
        batch = new_batch(s, world, tmp_path, lines)
        held = batches.claim(s, batch_id=batch.id, owner="gw", lease_s=30)
        assert held is not None
        batches.commit_chunk(s, batch=held, owner="gw", lease_s=30, chunk=chunk_of(s, world, held, lines))
    now = utcnow()
    ok = GenerationResult(text="ONE", finish_reason=FinishReason.STOP, prompt_tokens=4, completion_tokens=3)
    with transaction(session_factory) as s:
        record(
            s,
            [
                Outcome(job_id_for(batch.id, 0), "w", 0.1, 0.2, now, result=ok),
                Outcome(
                    job_id_for(batch.id, 2),
                    "w",
                    0.1,
                    0.2,
                    now,
                    error=JobError(code="engine_error", message="x"),
                ),
                Outcome(job_id_for(batch.id, 3), "w", 0.1, 0.2, now, result=ok),
            ],
        )
    with transaction(session_factory) as s:
        row = s.get(BatchRow, batch.id)
        assert row is not None
        seen = batches.record_progress(s, batch=row, now=utcnow())
        assert (seen.completed, seen.failed, seen.live) == (2, 2, 0)
        finalize(s, batch=row, files_dir=tmp_path, max_bytes=1 << 20)
        assert (row.status, row.completed, row.failed) == ("completed", 2, 2)
        with pytest.raises(Conflict):
            batches.cancel(s, tenant=world.acme, batch_id=batch.id)  # it ended
        out = [
            orjson.loads(x)
            for x in b"".join(
                files.content(files.get(s, tenant=world.acme, file_id=row.output_file_id or ""))
            ).splitlines()
        ]
        err = [
            orjson.loads(x)
            for x in b"".join(
                files.content(files.get(s, tenant=world.acme, file_id=row.error_file_id or ""))
            ).splitlines()
        ]
    assert [o["custom_id"] for o in out] == ["c0", "c3"]
    assert out[0]["response"]["body"]["choices"][0]["text"] == "ONE"
    assert [(e["custom_id"], (e["error"] or {}).get("code")) for e in err] == [(None, "invalid_json"), ("c2", None)]
    assert err[1]["response"]["body"]["error"]["code"] == "engine_error"


def test_a_batch_past_its_window_expires_and_cancels_what_waits(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    lines = [completion("a")]
    with transaction(session_factory) as s:
        batch = new_batch(s, world, tmp_path, lines)
        held = batches.claim(s, batch_id=batch.id, owner="gw", lease_s=30)
        assert held is not None
        batches.commit_chunk(s, batch=held, owner="gw", lease_s=30, chunk=chunk_of(s, world, held, lines))
    with transaction(session_factory) as s:
        row = s.get(BatchRow, batch.id)
        assert row is not None
        seen = batches.record_progress(s, batch=row, now=utcnow() + timedelta(hours=25))
        assert (row.status, seen.live) == ("cancelling", 0)
        finalize(s, batch=row, files_dir=tmp_path, max_bytes=1 << 20)
        assert row.status == "expired"
        err = orjson.loads(b"".join(files.content(files.get(s, tenant=world.acme, file_id=row.error_file_id or ""))))
    assert err["error"]["code"] == "batch_expired"


def test_files_refuse_oversize_uploads_other_purposes_and_other_tenants(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "files"
    with transaction(session_factory) as s:
        with pytest.raises(TooLarge):
            files.upload(
                s,
                tenant=world.acme,
                filename="big",
                purpose="batch",
                stream=io.BytesIO(b"x" * 2048),
                files_dir=tmp_path,
                max_bytes=1024,
            )
        assert list(tmp_path.iterdir()) == []  # nothing half-written is left
        with pytest.raises(InvalidRequest):
            files.upload(
                s,
                tenant=world.acme,
                filename="f",
                purpose="fine-tune",
                stream=io.BytesIO(b"{}"),
                files_dir=tmp_path,
                max_bytes=1024,
            )
        mine = files.upload(
            s,
            tenant=world.acme,
            filename="f",
            purpose="batch",
            stream=io.BytesIO(b"{}\n"),
            files_dir=tmp_path,
            max_bytes=1024,
        )
        with pytest.raises(NotFound):
            files.get(s, tenant=world.globex, file_id=mine.id)
        assert files.get(s, tenant=world.admin, file_id=mine.id).id == mine.id


def test_a_file_a_batch_still_reads_cannot_be_deleted(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    with transaction(session_factory) as s:
        batch = new_batch(s, world, tmp_path, [completion("a")])
        with pytest.raises(Conflict):
            files.delete(s, tenant=world.acme, file_id=batch.input_file_id)
        batches.cancel(s, tenant=world.acme, batch_id=batch.id)
        path = files.path_of(files.get(s, tenant=world.acme, file_id=batch.input_file_id))
        files.delete(s, tenant=world.acme, file_id=batch.input_file_id)
        assert not path.exists()
        with pytest.raises(NotFound):
            files.get(s, tenant=world.acme, file_id=batch.input_file_id)
