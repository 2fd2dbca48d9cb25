"""The rollups of a database upgraded with jobs in it are counted online: a backfill in short steps,
newest first, while jobs keep changing, ends equal to a recount; the purge waits for it."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.backfiller import Backfiller
from registry import backfill, coverage, jobs
from registry.adapters import ResolvedAdapter, resolve
from registry.db import transaction
from registry.models import Job, JobCount, RollupBackfill
from registry.retention import Policy, Purge
from registry.schemas import JobCreate
from tests.registry.test_adapters_and_jobs import World, register
from tests.registry.test_rollups import DAY0, Mix, bulk_jobs, recount, rollup_tables


def versions_of(sessions: sessionmaker[Session], world: World) -> list[ResolvedAdapter]:
    with transaction(sessions) as s:
        register(s, world, "rot13")
        return [resolve(s, tenant=world.acme, name=n, routing_key="k") for n in ("upper", "rot13")]


def history(sessions: sessionmaker[Session], world: World, tmp_path: Path, seed: int, steps: int) -> Mix:
    """Jobs in every status (a bulk batch's among them), then the rollups emptied and the backfill
    pending, as a database upgraded across 0006 has them."""
    bulk_jobs(sessions, world, tmp_path, lines=5)
    mix = Mix(sessions, world, versions_of(sessions, world), seed)
    with transaction(sessions) as s:
        mix.ids.extend(s.scalars(select(Job.id)))
    for _ in range(steps):
        mix.step()
    with transaction(sessions) as s:
        backfill.recount(s)
    return mix


def state(sessions: sessionmaker[Session]) -> coverage.State:
    with transaction(sessions) as s:
        return coverage.read(s)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_backfill_interleaved_with_changes_ends_equal_to_a_recount(
    session_factory: sessionmaker[Session], engine: Engine, world: World, tmp_path: Path, seed: int
) -> None:
    mix = history(session_factory, world, tmp_path, seed, steps=60)
    with engine.connect() as conn:
        assert not any(rollup_tables(conn).values())  # emptied: nothing counted yet
    assert state(session_factory).state == coverage.PENDING
    for _ in range(10):  # changes while pending are the backfill's to count
        mix.step()
    steps: list[backfill.Progress] = []

    def between(done: backfill.Progress) -> None:  # changes between every two steps, on both sides of floor
        steps.append(done)
        for _ in range(3):
            mix.step()

    done = backfill.run(session_factory, chunk=4, on_step=between)
    assert done.complete and len(steps) > 5
    with engine.connect() as conn:
        assert rollup_tables(conn) == recount(conn)
    for _ in range(20):  # and complete, every change counts itself
        mix.step()
    with engine.connect() as conn:
        assert rollup_tables(conn) == recount(conn)


def test_changes_on_other_threads_during_the_backfill_leave_the_rollups_equal_to_a_recount(
    session_factory: sessionmaker[Session], engine: Engine, world: World, tmp_path: Path
) -> None:
    history(session_factory, world, tmp_path, seed=7, steps=80)
    versions = versions_of(session_factory, world)
    stop = threading.Event()
    failures: list[BaseException] = []

    def churn(seed: int) -> None:
        mix = Mix(session_factory, world, versions, seed)
        with transaction(session_factory) as s:
            mix.ids.extend(random.Random(seed).sample(list(s.scalars(select(Job.id))), 20))
        try:
            while not stop.is_set():
                mix.step()
        except BaseException as e:  # reported by the test's thread
            failures.append(e)

    threads = [threading.Thread(target=churn, args=(seed,)) for seed in (11, 12)]
    for t in threads:
        t.start()
    try:
        done = backfill.run(session_factory, chunk=3, pause_s=0.002)
        time.sleep(0.2)  # changes after the end, too
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures
    assert done.complete
    with engine.connect() as conn:
        assert rollup_tables(conn) == recount(conn)


def test_the_backfill_counts_the_newest_jobs_first(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    history(session_factory, world, tmp_path, seed=3, steps=30)
    with transaction(session_factory) as s:
        newest = s.scalars(select(Job.id).order_by(Job.id.desc()).limit(4)).all()
        backfill.step(s, chunk=4)
    with transaction(session_factory) as s:
        assert coverage.covered(s, newest) == set(newest)
        older = s.scalars(select(Job.id).where(Job.id < newest[-1])).all()
        assert older and not coverage.covered(s, older)


def test_a_job_created_after_the_backfill_began_counts_itself_at_once(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    history(session_factory, world, tmp_path, seed=4, steps=20)
    with transaction(session_factory) as s:
        upper = resolve(s, tenant=world.acme, name="upper", routing_key="k")
    with transaction(session_factory) as s:
        backfill.step(s, chunk=1)
        before = s.scalar(select(func.coalesce(func.sum(JobCount.jobs), 0)).where(JobCount.status == "queued"))
    with transaction(session_factory) as s:
        request = JobCreate(adapter="upper", prompt="hi", max_tokens=2)
        job = jobs.create_job(s, tenant=world.acme, request=request, resolved=upper, job_id=jobs.new_job_id())
        assert coverage.covered(s, [job.id]) == {job.id}
    with transaction(session_factory) as s:
        after = s.scalar(select(func.coalesce(func.sum(JobCount.jobs), 0)).where(JobCount.status == "queued"))
    assert after == before + 1


def test_the_purge_waits_for_the_backfill_and_then_deletes(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    history(session_factory, world, tmp_path, seed=5, steps=60)
    purge = Purge(session_factory, policy=Policy(keep=timedelta(days=1), pause_s=0), owner="gw-test")
    later = DAY0 + timedelta(days=400)
    with transaction(session_factory) as s:
        total = s.scalar(select(func.count()).select_from(Job))
    waited = purge.run(later)
    assert waited.waiting_for_backfill and waited.jobs == 0
    backfill.run(session_factory)
    purged = purge.run(later)
    assert not purged.waiting_for_backfill and 0 < purged.jobs <= int(total or 0)


def test_the_gateway_backfiller_counts_in_the_background_and_ends(
    session_factory: sessionmaker[Session], engine: Engine, world: World, tmp_path: Path
) -> None:
    history(session_factory, world, tmp_path, seed=6, steps=40)
    loop = Backfiller(sessions=session_factory, chunk=5, pause_s=0)
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while not state(session_factory).complete and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        loop.stop()
    assert state(session_factory).complete
    assert loop._thread is not None and not loop._thread.is_alive()  # nothing more to do: it ended
    with engine.connect() as conn:
        assert rollup_tables(conn) == recount(conn)


def test_a_complete_backfill_takes_no_step_and_counts_nothing_again(
    session_factory: sessionmaker[Session], engine: Engine, world: World, tmp_path: Path
) -> None:
    history(session_factory, world, tmp_path, seed=8, steps=20)
    backfill.run(session_factory)
    with engine.connect() as conn:
        counted = rollup_tables(conn)
    with transaction(session_factory) as s:
        assert backfill.step(s).complete and backfill.remaining(s) == 0
    with engine.connect() as conn:
        assert rollup_tables(conn) == counted


def test_remaining_counts_the_jobs_below_the_floor(
    session_factory: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    history(session_factory, world, tmp_path, seed=9, steps=30)
    with transaction(session_factory) as s:
        total = int(s.scalar(select(func.count()).select_from(Job)) or 0)
        assert backfill.remaining(s) == total
        backfill.step(s, chunk=7)
    with transaction(session_factory) as s:
        assert backfill.remaining(s) == total - 7
        s.execute(update(RollupBackfill).values(state=coverage.COMPLETE))
    with transaction(session_factory) as s:
        assert backfill.remaining(s) == 0
