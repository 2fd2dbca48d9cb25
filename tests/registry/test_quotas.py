"""Tenant quotas: the decision as a function; reservation, settlement and bursts on a real database of each backend."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from registry.adapters import ResolvedAdapter, resolve
from registry.db import make_engine, transaction
from registry.db import session_factory as make_session_factory
from registry.errors import QuotaExceeded
from registry.jobs import cancel, create_job, new_job_id, start
from registry.models import Job, Tenant, TenantDayTokens, TenantLiveJobs
from registry.quotas import decide, enforce, set_quotas
from registry.schemas import JobCreate
from tests.registry.test_adapters_and_jobs import (
    World,
    failed,
    record_in_new_transaction,
    register,
    submit,
    succeeded,
)

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_the_live_job_limit_asks_to_retry_soon_and_the_token_limit_after_midnight() -> None:
    assert decide(live=1, max_live=2, tokens_today=5, max_tokens=10, now=NOON) is None
    live = decide(live=2, max_live=2, tokens_today=0, max_tokens=None, now=NOON)
    assert live is not None and live.code == "quota_exceeded" and live.retry_after_s == 5
    tokens = decide(live=0, max_live=None, tokens_today=10, max_tokens=10, now=NOON)
    assert tokens is not None and tokens.retry_after_s == 12 * 3600
    assert decide(live=99, max_live=None, tokens_today=99, max_tokens=None, now=NOON) is None


def test_quotas_count_the_tenants_own_live_jobs_and_todays_tokens(
    session_factory: sessionmaker[Session], world: World
) -> None:
    with transaction(session_factory) as session:
        register(session, world, "upper")
        upper = resolve(session, tenant=world.acme, name="upper", routing_key="k")
        acme = set_quotas(session, name="acme", max_queued_jobs=2, max_tokens_per_day=None)
    first, second = submit(session_factory, acme, upper), submit(session_factory, acme, upper)
    submit(session_factory, world.globex, upper)  # another tenant's job does not count
    with session_factory() as session, pytest.raises(QuotaExceeded):
        enforce(session, tenant=session.merge(acme))
    with transaction(session_factory) as session:
        start(session, job_ids=[first], worker="w1")
    record_in_new_transaction(session_factory, [succeeded(first, "abcd")])  # 7 prompt + 4 completion tokens
    with transaction(session_factory) as session:
        enforce(session, tenant=session.merge(acme))  # one live job now: room for another
        acme = set_quotas(session, name="acme", max_queued_jobs=None, max_tokens_per_day=11)
    with session_factory() as session, pytest.raises(QuotaExceeded) as info:
        enforce(session, tenant=session.merge(acme))
    assert info.value.retry_after_s > 0
    assert second  # still queued, untouched


# --- by reservation ---------------------------------------------------------------------------

HELLO = JobCreate(adapter="upper", prompt="hello", max_tokens=16)  # reserves 5 bytes + 16 = 21 tokens


def counters_of(sessions: sessionmaker[Session], tenant: Tenant) -> tuple[int, int]:
    """The tenant's live jobs and the tokens its jobs of today hold."""
    with sessions() as s:
        live = s.scalar(select(TenantLiveJobs.jobs).where(TenantLiveJobs.tenant_id == tenant.id)) or 0
        tokens = s.scalar(select(func.sum(TenantDayTokens.tokens)).where(TenantDayTokens.tenant_id == tenant.id)) or 0
    return int(live), int(tokens)


def new_job(sessions: sessionmaker[Session], tenant: Tenant, resolved: ResolvedAdapter) -> str:
    with transaction(sessions) as s:
        return create_job(s, tenant=tenant, request=HELLO, resolved=resolved, job_id=new_job_id()).id


def test_a_job_reserves_prompt_and_max_tokens_and_settles_to_its_real_count_or_releases_them(
    session_factory: sessionmaker[Session], world: World
) -> None:
    with transaction(session_factory) as s:
        register(s, world, "upper")
        upper = resolve(s, tenant=world.acme, name="upper", routing_key="k")
    done, broken, dropped = (new_job(session_factory, world.acme, upper) for _ in range(3))
    assert counters_of(session_factory, world.acme) == (3, 3 * 21)
    with transaction(session_factory) as s:
        start(s, job_ids=[done, broken], worker="w1")
    record_in_new_transaction(session_factory, [succeeded(done, "abcd")])  # 7 prompt + 4 completion tokens
    assert counters_of(session_factory, world.acme) == (2, 11 + 2 * 21)
    record_in_new_transaction(session_factory, [failed(broken, "engine_error", "x")])
    with transaction(session_factory) as s:
        cancel(s, tenant=world.acme, job_id=dropped)
    assert counters_of(session_factory, world.acme) == (0, 11)


def test_a_tokens_quota_refuses_a_job_whose_reservation_does_not_fit(
    session_factory: sessionmaker[Session], world: World
) -> None:
    with transaction(session_factory) as s:
        register(s, world, "upper")
        upper = resolve(s, tenant=world.acme, name="upper", routing_key="k")
        acme = set_quotas(s, name="acme", max_queued_jobs=None, max_tokens_per_day=41)
    new_job(session_factory, acme, upper)
    with pytest.raises(QuotaExceeded) as refused:
        new_job(session_factory, acme, upper)  # 21 + 21 > 41
    assert refused.value.code == "quota_exceeded" and "needs 21" in refused.value.message
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1  # the refused job was rolled back
    assert counters_of(session_factory, acme) == (1, 21)


def burst(
    sessions: list[sessionmaker[Session]], tenant: Tenant, resolved: ResolvedAdapter, *, n: int = 50
) -> tuple[int, int]:
    """``n`` submissions at once from threads with sessions of their own, spread over ``sessions``
    (one engine per gateway replica); returns (admitted, refused)."""
    ready = threading.Barrier(n)

    def one(i: int) -> bool:
        ready.wait()
        try:
            new_job(sessions[i % len(sessions)], tenant, resolved)
        except QuotaExceeded:
            return False
        return True

    with ThreadPoolExecutor(max_workers=n) as pool:
        admitted = sum(pool.map(one, range(n)))
    return admitted, n - admitted


@pytest.fixture
def two_gateways(db_url: str, session_factory: sessionmaker[Session]) -> Iterator[list[sessionmaker[Session]]]:
    """Two engines on one database, as two gateway replicas hold."""
    other = make_engine(db_url)
    yield [session_factory, make_session_factory(other)]
    other.dispose()


def test_a_burst_of_50_submissions_admits_exactly_what_fits_a_tokens_quota(
    two_gateways: list[sessionmaker[Session]], world: World
) -> None:
    with transaction(two_gateways[0]) as s:
        register(s, world, "upper")
        upper = resolve(s, tenant=world.acme, name="upper", routing_key="k")
        acme = set_quotas(s, name="acme", max_queued_jobs=None, max_tokens_per_day=17 * 21 + 20)
    assert burst(two_gateways, acme, upper) == (17, 33)
    assert counters_of(two_gateways[0], acme) == (17, 17 * 21)
    with two_gateways[0]() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 17


def test_a_burst_of_50_submissions_admits_exactly_what_fits_a_live_jobs_quota(
    two_gateways: list[sessionmaker[Session]], world: World
) -> None:
    with transaction(two_gateways[0]) as s:
        register(s, world, "upper")
        upper = resolve(s, tenant=world.acme, name="upper", routing_key="k")
        acme = set_quotas(s, name="acme", max_queued_jobs=10, max_tokens_per_day=None)
    assert burst(two_gateways, acme, upper) == (10, 40)
    assert counters_of(two_gateways[0], acme) == (10, 10 * 21)
