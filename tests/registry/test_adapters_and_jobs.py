"""Adapter and job repositories on a real database of each backend.

Adapter versions are built from plausible ``AdapterInfo`` values directly:
these tests are about the repository, not validation (see test_artifacts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from registry.adapters import (
    ResolvedAdapter,
    active_adapter_names,
    ensure_base_model,
    get_visible,
    list_visible,
    register_version,
    resolve,
    route_weights,
)
from registry.artifacts.checks import AdapterInfo
from registry.db import transaction
from registry.errors import Conflict, NotFound
from registry.jobs import Outcome, create_job, discard_unpublished, get_view, new_job_id, record, start
from registry.keys import ensure_tenant
from registry.models import Adapter, AdapterVersion, BaseModelRow, Job, Route, Tenant
from registry.routing import choose_version
from registry.schemas import FinishReason, GenerationResult, JobCreate, JobError, JobStatus, JobView

ROUTING_KEYS = [f"user-{i}" for i in range(200)]


@dataclass(frozen=True)
class World:
    """Tenants and a base model every test starts from."""

    admin: Tenant
    acme: Tenant
    globex: Tenant
    base: BaseModelRow


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> World:
    with transaction(session_factory) as session:
        return World(
            admin=ensure_tenant(session, name="ops", is_admin=True),
            acme=ensure_tenant(session, name="acme"),
            globex=ensure_tenant(session, name="globex"),
            base=ensure_base_model(session, name="loraq/demo-base", path="/srv/models/demo-base"),
        )


@pytest.fixture
def db(session_factory: sessionmaker[Session], world: World) -> Iterator[Session]:
    """One transaction (committed on success) for a test body that needs no more; opened after ``world``."""
    with transaction(session_factory) as session:
        yield session


def fake_info(name: str, version: int = 1) -> AdapterInfo:
    uri = f"/srv/adapters/{name}/v{version}"
    return AdapterInfo(
        path=Path(uri),
        r=8,
        alpha=16.0,
        target_modules=["q_proj", "v_proj"],
        sha256=hashlib.sha256(uri.encode()).hexdigest(),
        size_bytes=1_048_576,
    )


def register(
    session: Session, world: World, name: str, *, owner: Tenant | None = None, public: bool = True
) -> AdapterVersion:
    existing = session.scalar(
        select(func.count(AdapterVersion.id))
        .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
        .where(Adapter.name == name)
    )
    info = fake_info(name, (existing or 0) + 1)
    return register_version(
        session,
        name=name,
        uri=str(info.path),
        info=info,
        base=world.base,
        owner=owner or world.admin,
        public=public,
    )


# -- adapters ---------------------------------------------------------------------------------


def test_first_version_gets_all_traffic(db: Session, world: World) -> None:
    version = register(db, world, "upper")

    adapter = get_visible(db, tenant=world.acme, name="upper")
    assert version.version == 1
    assert version.status == "active"
    assert route_weights(db, adapter) == {1: 100}


def test_registering_a_second_version_moves_the_route(db: Session, world: World) -> None:
    first = register(db, world, "upper")
    second = register(db, world, "upper")

    adapter = get_visible(db, tenant=world.acme, name="upper")
    assert (first.version, second.version) == (1, 2)
    assert route_weights(db, adapter) == {2: 100}
    chosen = {resolve(db, tenant=world.acme, name="upper", routing_key=k).version for k in ROUTING_KEYS}
    assert chosen == {2}


def test_resolve_returns_the_routed_version(db: Session, world: World) -> None:
    version = register(db, world, "upper")

    resolved = resolve(db, tenant=world.acme, name="upper", routing_key="user-1")

    assert resolved == ResolvedAdapter(
        adapter_id=version.adapter_id,
        name="upper",
        version_id=version.id,
        version=1,
        uri=version.uri,
        sha256=version.sha256,
    )


def test_resolve_follows_a_canary_split_per_routing_key(db: Session, world: World) -> None:
    stable = register(db, world, "upper")
    canary = register(db, world, "upper")
    db.execute(delete(Route).where(Route.adapter_id == stable.adapter_id))
    legs = [(stable.id, 90), (canary.id, 10)]
    db.add_all(Route(adapter_id=stable.adapter_id, version_id=v, weight=w) for v, w in legs)
    db.flush()

    for key in ROUTING_KEYS:
        resolved = resolve(db, tenant=world.acme, name="upper", routing_key=key)
        assert resolved.version_id == choose_version(legs, key)
    versions = {resolve(db, tenant=world.acme, name="upper", routing_key=k).version for k in ROUTING_KEYS}
    assert versions == {1, 2}


def test_private_adapter_is_invisible_to_other_tenants(db: Session, world: World) -> None:
    register(db, world, "acme-support", owner=world.acme, public=False)

    with pytest.raises(NotFound) as caught:
        resolve(db, tenant=world.globex, name="acme-support", routing_key="user-1")
    assert caught.value.code == "adapter_not_found"
    with pytest.raises(NotFound):
        get_visible(db, tenant=world.globex, name="acme-support")
    assert [a.name for a in list_visible(db, tenant=world.globex)] == []


def test_private_adapter_is_visible_to_its_owner_and_admins(db: Session, world: World) -> None:
    register(db, world, "acme-support", owner=world.acme, public=False)
    register(db, world, "upper")

    for tenant in (world.acme, world.admin):
        assert resolve(db, tenant=tenant, name="acme-support", routing_key="user-1").version == 1
        assert [a.name for a in list_visible(db, tenant=tenant)] == ["acme-support", "upper"]
    assert [a.name for a in list_visible(db, tenant=world.globex)] == ["upper"]


def test_unknown_adapter_is_not_found(db: Session, world: World) -> None:
    with pytest.raises(NotFound) as caught:
        resolve(db, tenant=world.admin, name="nope", routing_key="user-1")
    assert caught.value.code == "adapter_not_found"


def test_another_tenants_adapter_name_cannot_be_taken(db: Session, world: World) -> None:
    register(db, world, "acme-support", owner=world.acme, public=False)

    with pytest.raises(Conflict) as caught:
        register(db, world, "acme-support", owner=world.globex, public=True)
    assert caught.value.code == "adapter_name_taken"


def test_active_adapter_names_lists_routed_active_adapters(db: Session, world: World) -> None:
    assert active_adapter_names(db) == []
    register(db, world, "upper")
    register(db, world, "rot13")
    retired = register(db, world, "legacy")
    db.execute(update(AdapterVersion).where(AdapterVersion.id == retired.id).values(status="retired"))

    assert active_adapter_names(db) == ["rot13", "upper"]


# -- jobs -------------------------------------------------------------------------------------


@pytest.fixture
def upper(session_factory: sessionmaker[Session], world: World) -> ResolvedAdapter:
    with transaction(session_factory) as session:
        register(session, world, "upper")
        return resolve(session, tenant=world.acme, name="upper", routing_key="user-1")


def submit(
    session_factory: sessionmaker[Session],
    tenant: Tenant,
    resolved: ResolvedAdapter,
    *,
    idempotency_key: str | None = None,
) -> str:
    request = JobCreate(adapter=resolved.name, prompt="hello", idempotency_key=idempotency_key)
    with transaction(session_factory) as session:
        job = create_job(session, tenant=tenant, request=request, resolved=resolved, job_id=new_job_id())
        return job.id


def view(session_factory: sessionmaker[Session], tenant: Tenant, job_id: str) -> JobView:
    with session_factory() as session:
        return get_view(session, tenant=tenant, job_id=job_id)


def succeeded(job_id: str, text: str, *, worker: str = "w1") -> Outcome:
    return Outcome(
        job_id=job_id,
        worker=worker,
        queue_wait_s=0.25,
        run_time_s=1.5,
        finished_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        result=GenerationResult(
            text=text, finish_reason=FinishReason.STOP, prompt_tokens=7, completion_tokens=len(text)
        ),
    )


def failed(job_id: str, code: str, message: str) -> Outcome:
    return Outcome(
        job_id=job_id,
        worker="w1",
        queue_wait_s=0.25,
        run_time_s=0.1,
        finished_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        error=JobError(code=code, message=message),
    )


def record_in_new_transaction(session_factory: sessionmaker[Session], outcomes: list[Outcome]) -> None:
    with transaction(session_factory) as session:
        record(session, outcomes)


def test_created_job_is_queued_and_visible_to_its_tenant(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    job_id = submit(session_factory, world.acme, upper)

    job = view(session_factory, world.acme, job_id)
    assert (job.id, job.status, job.adapter, job.version) == (job_id, JobStatus.QUEUED, "upper", 1)
    assert (job.attempts, job.result, job.error) == (0, None, None)
    assert job.created_at.tzinfo is not None
    assert view(session_factory, world.admin, job_id).id == job_id


def test_another_tenant_cannot_see_a_job(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    job_id = submit(session_factory, world.acme, upper)

    with pytest.raises(NotFound) as caught:
        view(session_factory, world.globex, job_id)
    assert caught.value.code == "job_not_found"


def test_idempotency_key_returns_the_first_job(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    first = submit(session_factory, world.acme, upper, idempotency_key="order-42")
    retried = submit(session_factory, world.acme, upper, idempotency_key="order-42")
    other_tenant = submit(session_factory, world.globex, upper, idempotency_key="order-42")

    assert retried == first
    assert other_tenant != first
    with session_factory() as session:
        assert session.scalar(select(func.count(Job.id))) == 2


def test_idempotent_create_rolls_back_with_its_transaction(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    request = JobCreate(adapter="upper", prompt="hello", idempotency_key="order-42")
    with pytest.raises(RuntimeError), transaction(session_factory) as session:
        create_job(session, tenant=world.acme, request=request, resolved=upper, job_id=new_job_id())
        raise RuntimeError("publishing failed")

    with session_factory() as session:
        assert session.scalar(select(func.count(Job.id))) == 0
    assert submit(session_factory, world.acme, upper, idempotency_key="order-42")


def test_start_marks_jobs_running_and_counts_attempts(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    one, two = submit(session_factory, world.acme, upper), submit(session_factory, world.acme, upper)

    with transaction(session_factory) as session:
        live = start(session, job_ids=[one, two, "no-such-job"], worker="w1")
    assert live == {one: 1, two: 1}
    job = view(session_factory, world.acme, one)
    assert (job.status, job.attempts, job.worker) == (JobStatus.RUNNING, 1, "w1")
    assert job.started_at is not None

    with transaction(session_factory) as session:
        assert start(session, job_ids=[one], worker="w2") == {one: 2}
    job = view(session_factory, world.acme, one)
    assert (job.status, job.attempts, job.worker) == (JobStatus.RUNNING, 2, "w2")


def test_start_skips_jobs_already_terminal(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    done, waiting = submit(session_factory, world.acme, upper), submit(session_factory, world.acme, upper)
    record_in_new_transaction(session_factory, [succeeded(done, "HELLO")])

    with transaction(session_factory) as session:
        assert set(start(session, job_ids=[done, waiting], worker="w1")) == {waiting}
    assert view(session_factory, world.acme, done).attempts == 0


def test_record_sets_succeeded_with_text_and_tokens(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    job_id = submit(session_factory, world.acme, upper)
    with transaction(session_factory) as session:
        start(session, job_ids=[job_id], worker="w1")
    outcome = succeeded(job_id, "HELLO")

    record_in_new_transaction(session_factory, [outcome])

    job = view(session_factory, world.acme, job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.result is not None
    assert (job.result.text, job.result.finish_reason) == ("HELLO", FinishReason.STOP)
    assert (job.result.prompt_tokens, job.result.completion_tokens) == (7, 5)
    assert (job.worker, job.queue_wait_s, job.run_time_s) == ("w1", 0.25, 1.5)
    assert job.finished_at == outcome.finished_at
    assert job.error is None


def test_duplicate_delivery_does_not_overwrite_a_recorded_result(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    job_id = submit(session_factory, world.acme, upper)
    record_in_new_transaction(session_factory, [succeeded(job_id, "HELLO")])

    record_in_new_transaction(session_factory, [succeeded(job_id, "HELLO AGAIN", worker="w2")])
    record_in_new_transaction(session_factory, [failed(job_id, "engine_crashed", "boom")])

    job = view(session_factory, world.acme, job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.result is not None and job.result.text == "HELLO"
    assert (job.worker, job.error) == ("w1", None)


def test_failure_outcome_sets_error_code_and_message(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    job_id = submit(session_factory, world.acme, upper)

    record_in_new_transaction(session_factory, [failed(job_id, "prompt_too_long", "prompt exceeds 2048 tokens")])

    job = view(session_factory, world.acme, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert (job.error.code, job.error.message) == ("prompt_too_long", "prompt exceeds 2048 tokens")
    assert job.result is None


def test_record_writes_a_mixed_bulk_of_outcomes(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    ids = [submit(session_factory, world.acme, upper) for _ in range(4)]
    outcomes = [succeeded(ids[0], "A"), failed(ids[1], "oom", "x"), succeeded(ids[2], "C")]

    record_in_new_transaction(session_factory, outcomes)

    statuses = [view(session_factory, world.acme, i).status for i in ids]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUCCEEDED, JobStatus.QUEUED]


def test_discard_unpublished_removes_only_a_queued_job(
    session_factory: sessionmaker[Session], world: World, upper: ResolvedAdapter
) -> None:
    queued, done = submit(session_factory, world.acme, upper), submit(session_factory, world.acme, upper)
    record_in_new_transaction(session_factory, [succeeded(done, "HELLO")])

    with transaction(session_factory) as session:
        for job_id in (queued, done):
            discard_unpublished(session, job_id=job_id)

    with pytest.raises(NotFound):
        view(session_factory, world.acme, queued)
    assert view(session_factory, world.acme, done).status == JobStatus.SUCCEEDED
