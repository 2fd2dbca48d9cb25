"""The purge on each database: it deletes what the retention no longer keeps and nothing else, with
the bytes of the files it deletes; the rollups keep counting what it deleted; a read of what it
deleted answers ``*_expired``; it works in chunks, one gateway at a time."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from registry import batches, files, jobs, leases, retention
from registry.adapters import ResolvedAdapter, resolve
from registry.batch_lines import job_id_for
from registry.batch_output import finalize
from registry.db import transaction
from registry.errors import NotFound
from registry.models import (
    BatchLineError,
    BatchRow,
    FileRow,
    Job,
    JobMinute,
    JobWebhook,
    Lease,
    Tenant,
    WebhookDelivery,
    utcnow,
)
from registry.retention import Policy, Purge
from registry.schemas import FinishReason, GenerationResult, JobCreate, JobError
from tests.registry.test_adapters_and_jobs import World, register
from tests.registry.test_batches import chunk_of, completion, new_batch
from tests.registry.test_rollups import DAY0, Mix, rollup_tables

KEEP = timedelta(days=30)
OK = GenerationResult(text="HI", finish_reason=FinishReason.STOP, prompt_tokens=3, completion_tokens=2)


def purge(
    sessions: sessionmaker[Session], now: datetime, *, keep: timedelta | None = KEEP, chunk: int = 1000
) -> retention.Purged:
    return Purge(sessions, policy=Policy(keep=keep, chunk_rows=chunk, pause_s=0), owner="gw-test").run(now)


def upper(sessions: sessionmaker[Session], world: World) -> ResolvedAdapter:
    with transaction(sessions) as s:
        register(s, world, "upper")
        return resolve(s, tenant=world.acme, name="upper", routing_key="k")


def submit(sessions: sessionmaker[Session], tenant: Tenant, version: ResolvedAdapter) -> str:
    with transaction(sessions) as s:
        request = JobCreate(adapter="upper", prompt="hi", max_tokens=4)
        return jobs.create_job(s, tenant=tenant, request=request, resolved=version, job_id=jobs.new_job_id()).id


def end(sessions: sessionmaker[Session], job_id: str, finished_at: datetime, *, ok: bool = True) -> None:
    error = None if ok else JobError(code="engine_error", message="x")
    with transaction(sessions) as s:
        jobs.record(s, [jobs.Outcome(job_id, "w1", 0.1, 0.2, finished_at, result=OK if ok else None, error=error)])


def job_ids(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as s:
        return set(s.scalars(select(Job.id)))


def delivery(tenant_id: int, created_at: datetime, status: str) -> WebhookDelivery:
    return WebhookDelivery(
        id=f"evt_{uuid.uuid4().hex}",
        tenant_id=tenant_id,
        url="https://example.com/hook",
        event_type="job.completed",
        subject_id="x",
        payload="{}",
        status=status,
        created_at=created_at,
        next_attempt_at=created_at,
    )


def test_purge_deletes_ended_jobs_older_than_the_retention_and_nothing_else(
    session_factory: sessionmaker[Session], world: World
) -> None:
    version, now = upper(session_factory, world), utcnow()
    old_ok, old_failed, old_hooked, recent, live = (submit(session_factory, world.acme, version) for _ in range(5))
    old_cancelled = submit(session_factory, world.globex, version)
    end(session_factory, old_ok, now - KEEP - timedelta(hours=1))
    end(session_factory, old_failed, now - KEEP - timedelta(days=3), ok=False)
    end(session_factory, old_hooked, now - KEEP - timedelta(minutes=1))
    end(session_factory, recent, now - KEEP + timedelta(minutes=1))
    with transaction(session_factory) as s:
        jobs.cancel(s, tenant=world.globex, job_id=old_cancelled)
        s.execute(update(Job).where(Job.id == old_cancelled).values(finished_at=now - KEEP - timedelta(days=1)))
        s.add(JobWebhook(job_id=old_hooked, url="https://example.com/hook"))
        old_sent = delivery(world.acme.id, now - KEEP - timedelta(hours=2), "delivered")
        old_given_up = delivery(world.acme.id, now - KEEP - timedelta(hours=2), "failed")
        old_pending = delivery(world.acme.id, now - KEEP - timedelta(hours=2), "pending")
        recent_sent = delivery(world.acme.id, now - KEEP + timedelta(hours=2), "delivered")
        s.add_all([old_sent, old_given_up, old_pending, recent_sent])

    purged = purge(session_factory, now)

    assert job_ids(session_factory) == {recent, live}
    assert (purged.jobs, purged.deliveries, purged.finished) == (4, 2, True)
    with session_factory() as s:
        assert s.scalars(select(JobWebhook.job_id)).all() == []
        assert set(s.scalars(select(WebhookDelivery.id))) == {old_pending.id, recent_sent.id}
    assert purge(session_factory, now).rows == 0  # nothing left to do: a second pass deletes nothing


def test_purge_leaves_the_rollups_unchanged_but_the_minutes_older_than_the_retention(
    session_factory: sessionmaker[Session], engine: Engine, world: World
) -> None:
    mix = Mix(session_factory, world, [upper(session_factory, world)], seed=11)
    for _ in range(120):
        mix.step()
    cutoff = DAY0 + timedelta(minutes=90)  # the mix's results end over DAY0's first three hours
    now = cutoff + KEEP
    with engine.connect() as conn:
        before = rollup_tables(conn)
        ended_before = set(
            conn.execute(select(Job.id).where(Job.finished_at < cutoff, Job.status.not_in(("queued", "running"))))
        )
    all_ids = job_ids(session_factory)

    purged = purge(session_factory, now, chunk=7)

    with engine.connect() as conn:
        after = rollup_tables(conn)
    assert purged.jobs == len(ended_before) > 0 and purged.minutes > 0
    assert job_ids(session_factory) == all_ids - {row[0] for row in ended_before}
    kept_minutes = {k: v for k, v in before["job_minutes"].items() if k[0] >= cutoff}
    assert after == {**before, "job_minutes": kept_minutes}


def test_purge_works_in_chunks_of_the_policys_rows(session_factory: sessionmaker[Session], world: World) -> None:
    version, now = upper(session_factory, world), utcnow()
    for _ in range(5):
        end(session_factory, submit(session_factory, world.acme, version), now - KEEP - timedelta(days=1))
    purged = purge(session_factory, now, chunk=2)
    assert purged.jobs == 5
    assert purged.chunks >= 3 + 1  # 2 + 2 + 1 jobs, then the minute buckets
    assert job_ids(session_factory) == set()


def ended_batch(
    sessions: sessionmaker[Session], world: World, tmp_path: Path, *, output_expires_s: int | None = None
) -> BatchRow:
    """A batch whose lines all ended (one succeeded, one failed, one refused), with its two files written."""
    lines = [completion("ok"), completion("bad"), b"{not json"]
    with transaction(sessions) as s:
        batch = new_batch(s, world, tmp_path, lines)
        batch.output_expires_s = output_expires_s
        held = batches.claim(s, batch_id=batch.id, owner="gw", lease_s=30)
        assert held is not None
        batches.commit_chunk(s, batch=held, owner="gw", lease_s=30, chunk=chunk_of(s, world, held, lines))
    end(sessions, job_id_for(batch.id, 0), utcnow())
    end(sessions, job_id_for(batch.id, 1), utcnow(), ok=False)
    with transaction(sessions) as s:
        row = s.get(BatchRow, batch.id)
        assert row is not None
        batches.record_progress(s, batch=row, now=utcnow())
        finalize(s, batch=row, files_dir=tmp_path, max_bytes=1 << 20)
        assert row.output_file_id is not None and row.error_file_id is not None
        return row


def running_batch(sessions: sessionmaker[Session], world: World, input_file_id: str) -> tuple[str, str]:
    """A batch reading ``input_file_id`` whose first line ended and second waits: (batch id, ended job id)."""
    lines = [completion("a"), completion("b")]
    with transaction(sessions) as s:
        batch = batches.create(
            s,
            tenant=world.acme,
            input_file_id=input_file_id,
            endpoint="/v1/completions",
            completion_window="24h",
            metadata=None,
        )
        held = batches.claim(s, batch_id=batch.id, owner="gw", lease_s=30)
        assert held is not None
        batches.commit_chunk(s, batch=held, owner="gw", lease_s=30, chunk=chunk_of(s, world, held, lines))
    end(sessions, job_id_for(batch.id, 0), utcnow())
    return batch.id, job_id_for(batch.id, 0)


def upload(sessions: sessionmaker[Session], world: World, tmp_path: Path) -> FileRow:
    with transaction(sessions) as s:
        return files.store(
            s,
            tenant_id=world.acme.id,
            filename="alone.jsonl",
            purpose="batch",
            chunks=[b"{}\n"],
            files_dir=tmp_path,
            max_bytes=1 << 20,
        )


def code_of(read: Callable[..., object], session: Session, **what: Any) -> str:
    """The code of the 404 ``read(session, **what)`` raises."""
    with pytest.raises(NotFound) as caught:
        read(session, **what)
    return caught.value.code


def test_purge_deletes_ended_batches_with_their_files_and_keeps_what_a_running_batch_reads(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    done = ended_batch(session_factory, world, tmp_path)
    assert done.output_file_id is not None and done.error_file_id is not None
    running, running_ended_job = running_batch(session_factory, world, done.input_file_id)
    alone = upload(session_factory, world, tmp_path)
    with session_factory() as s:
        done_paths = [files.path_of(r) for r in s.scalars(select(FileRow).where(FileRow.id != alone.id))]
    assert all(p.exists() for p in done_paths) and files.path_of(alone).exists()

    purged = purge(session_factory, utcnow() + KEEP + timedelta(hours=1))

    assert (purged.batches, purged.files, purged.jobs) == (1, 3, 2)
    with session_factory() as s:
        assert set(s.scalars(select(BatchRow.id))) == {running}
        assert set(s.scalars(select(FileRow.id))) == {done.input_file_id}
        assert s.scalars(select(BatchLineError.id).where(BatchLineError.batch_id == done.id)).all() == []
    assert job_ids(session_factory) == {running_ended_job, job_id_for(running, 1)}  # its batch still runs
    assert not files.path_of(alone).exists()
    assert [p.exists() for p in done_paths] == [p.name == done.input_file_id for p in done_paths]


def test_a_purged_job_file_or_batch_reads_expired_and_an_unknown_one_not_found(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    done = ended_batch(session_factory, world, tmp_path)
    version = upper(session_factory, world)
    single = submit(session_factory, world.acme, version)
    end(session_factory, single, utcnow())
    purge(session_factory, utcnow() + KEEP + timedelta(hours=1))
    unknown_job, unknown_file = jobs.new_job_id(), files.new_file_id()  # made after the purge: never existed
    with session_factory() as s:
        for tenant in (world.acme, world.admin):
            for job_id in (single, job_id_for(done.id, 0)):
                assert code_of(jobs.get_view, s, tenant=tenant, job_id=job_id) == "job_expired"
            for file_id in (done.output_file_id or "", done.error_file_id or "", done.input_file_id):
                assert code_of(files.get, s, tenant=tenant, file_id=file_id) == "file_expired"
            assert code_of(batches.get, s, tenant=tenant, batch_id=done.id) == "batch_expired"
            assert code_of(jobs.get_view, s, tenant=tenant, job_id=unknown_job) == "job_not_found"
            assert code_of(jobs.get_view, s, tenant=tenant, job_id=str(uuid.uuid4())) == "job_not_found"
            assert code_of(files.get, s, tenant=tenant, file_id=unknown_file) == "file_not_found"
        assert code_of(jobs.get_view, s, tenant=world.globex, job_id=single) == "job_not_found"  # not its


def test_a_batchs_output_expires_after_its_time_with_its_jobs_and_the_batch_stays(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    done = ended_batch(session_factory, world, tmp_path, output_expires_s=3600)
    assert done.output_expires_at is not None
    version = upper(session_factory, world)
    other = submit(session_factory, world.acme, version)
    end(session_factory, other, utcnow())
    with session_factory() as s:
        outputs = [files.get(s, tenant=world.acme, file_id=f or "") for f in (done.output_file_id, done.error_file_id)]
    assert [row.expires_at for row in outputs] == [done.output_expires_at] * 2  # what GET /v1/files says
    assert purge(session_factory, done.output_expires_at - timedelta(minutes=1), keep=None).rows == 0

    purged = purge(session_factory, done.output_expires_at + timedelta(seconds=1), keep=None)

    assert (purged.expired_outputs, purged.jobs) == (1, 2)
    assert job_ids(session_factory) == {other}
    assert not any(files.path_of(row).exists() for row in outputs)
    with session_factory() as s:
        batch = batches.get(s, tenant=world.acme, batch_id=done.id)
        assert (batch.status, batch.output_file_id, batch.output_expires_at) == ("completed", done.output_file_id, None)
        assert files.get(s, tenant=world.acme, file_id=done.input_file_id).id == done.input_file_id
        assert code_of(files.get, s, tenant=world.acme, file_id=done.output_file_id or "") == "file_expired"
        assert code_of(jobs.get_view, s, tenant=world.acme, job_id=job_id_for(done.id, 0)) == "job_expired"
        assert s.scalars(select(BatchLineError.id).where(BatchLineError.batch_id == done.id)).all() == []
    assert purge(session_factory, utcnow() + timedelta(days=2), keep=None).rows == 0


def test_one_gateway_purges_at_a_time_and_another_takes_over_an_expired_lease(
    session_factory: sessionmaker[Session], world: World
) -> None:
    version, now = upper(session_factory, world), utcnow()
    old = submit(session_factory, world.acme, version)
    end(session_factory, old, now - KEEP - timedelta(days=1))
    with transaction(session_factory) as s:
        assert leases.claim(s, name=retention.LEASE, owner="gw-other", now=utcnow(), duration=timedelta(minutes=2))

    blocked = purge(session_factory, now)

    assert (blocked.finished, blocked.rows) == (False, 0)
    assert job_ids(session_factory) == {old}
    with transaction(session_factory) as s:  # the other gateway died: its lease ran out
        s.execute(update(Lease).values(until=utcnow() - timedelta(seconds=1)))
    assert purge(session_factory, now).jobs == 1
    with transaction(session_factory) as s:  # and the purge gave its lease up when it was done
        assert leases.claim(s, name=retention.LEASE, owner="gw-other", now=utcnow(), duration=timedelta(minutes=2))


def test_a_purge_asked_to_stop_deletes_nothing_more(session_factory: sessionmaker[Session], world: World) -> None:
    version, now = upper(session_factory, world), utcnow()
    end(session_factory, submit(session_factory, world.acme, version), now - KEEP - timedelta(days=1))
    stopping = Purge(session_factory, policy=Policy(keep=KEEP, pause_s=0), owner="gw-test")
    stopping.stop.set()
    assert stopping.run(now).finished is False
    assert len(job_ids(session_factory)) == 1
    with session_factory() as s:
        assert s.scalars(select(JobMinute.bucket)).all()
