"""What operators read from the registry, on each database: queue status, error rates, the cost report."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from registry import status, usage
from registry.adapters import resolve
from registry.db import transaction
from registry.errors import InvalidRequest
from registry.jobs import Outcome, create_job, new_job_id, record
from registry.models import Job, utcnow
from registry.schemas import FinishReason, GenerationResult, JobCreate, JobError
from tests.registry.test_adapters_and_jobs import World, register


def submit(session: Session, world: World, adapter: str, tenant: str = "acme") -> str:
    owner = getattr(world, tenant)
    resolved = resolve(session, tenant=owner, name=adapter, routing_key=new_job_id())
    request = JobCreate(adapter=adapter, prompt="p")
    return create_job(session, tenant=owner, request=request, resolved=resolved, job_id=new_job_id()).id


def finish(session: Session, job_id: str, *, tokens: tuple[int, int] | None, seconds: float) -> None:
    result = (
        None
        if tokens is None
        else GenerationResult(
            text="x", finish_reason=FinishReason.STOP, prompt_tokens=tokens[0], completion_tokens=tokens[1]
        )
    )
    error = JobError(code="engine_error", message="x") if tokens is None else None
    record(session, [Outcome(job_id, "w1@h", 0.1, 0.5, utcnow(), result=result, error=error, worker_seconds=seconds)])


def test_queue_status_error_rates_and_worker_activity(session_factory: sessionmaker[Session], world: World) -> None:
    with transaction(session_factory) as s:
        register(s, world, "upper")
        register(s, world, "rot13")
        waiting = [submit(s, world, "upper") for _ in range(3)]
        done = [submit(s, world, "rot13") for _ in range(4)]
        s.execute(update(Job).where(Job.id == waiting[0]).values(created_at=utcnow() - timedelta(seconds=90)))
    with transaction(session_factory) as s:
        for job_id in done[:3]:
            finish(s, job_id, tokens=(5, 7), seconds=0.2)
        finish(s, done[3], tokens=None, seconds=0.1)
    with session_factory() as s:
        now = utcnow()
        queues = {q.adapter: q for q in status.queues(s, now=now)}
        workers = status.workers(s, now=now)
        routes = {r.adapter: r for r in status.routes(s, now=now)}
    assert (queues["upper"].queued, queues["upper"].done_last_min) == (3, 0)
    assert 89 <= queues["upper"].oldest_wait_s < 120
    assert (queues["rot13"].queued, queues["rot13"].done_last_min) == (0, 4)
    assert list(queues) == ["upper", "rot13"]  # the longest wait first
    assert workers["w1@h"].jobs_last_min == 4 and workers["w1@h"].tokens_per_s == pytest.approx(21 / 60)
    [rot13] = routes["rot13"].versions
    assert (rot13.weight, rot13.succeeded_1h, rot13.failed_1h, rot13.error_rate) == (100, 3, 1, 0.25)


def test_usage_sums_tokens_and_worker_seconds_per_group_and_tenant(
    session_factory: sessionmaker[Session], world: World
) -> None:
    with transaction(session_factory) as s:
        register(s, world, "upper")
        mine = [submit(s, world, "upper") for _ in range(2)]
        theirs = submit(s, world, "upper", tenant="globex")
        cancelled = submit(s, world, "upper")
        s.execute(update(Job).where(Job.id == cancelled).values(status="cancelled", finished_at=utcnow()))
    with transaction(session_factory) as s:
        finish(s, mine[0], tokens=(3, 4), seconds=0.25)
        finish(s, mine[1], tokens=(10, 20), seconds=0.5)
        finish(s, theirs, tokens=(100, 200), seconds=2.0)
    since, until = utcnow() - timedelta(hours=1), utcnow() + timedelta(seconds=1)
    with session_factory() as s:
        acme = usage.report(s, tenant=world.acme, since=since, until=until, group_by=["tenant", "adapter", "version"])
        every = usage.report(s, tenant=world.admin, since=since, until=until, group_by=["tenant"])
        later = usage.report(s, tenant=world.admin, since=until, until=until + timedelta(hours=1), group_by=["adapter"])
    [row] = acme
    assert (row.tenant, row.adapter, row.version, row.jobs) == ("acme", "upper", 1, 2)
    assert (row.prompt_tokens, row.completion_tokens, row.worker_seconds) == (13, 24, 0.75)
    assert {(r.tenant, r.jobs, r.completion_tokens) for r in every} == {("acme", 2, 24), ("globex", 1, 200)}
    assert later == []


def test_usage_refuses_unknown_groups_and_empty_ranges() -> None:
    assert usage.parse_groups("version") == ["adapter", "version"]
    with pytest.raises(InvalidRequest):
        usage.parse_groups("tenant,colour")
