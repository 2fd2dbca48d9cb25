"""Tenant quotas: the decision as a function, and enforcement on a real database of each backend."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry.adapters import resolve
from registry.db import transaction
from registry.errors import QuotaExceeded
from registry.jobs import start
from registry.quotas import decide, enforce, set_quotas
from tests.registry.test_adapters_and_jobs import World, record_in_new_transaction, register, submit, succeeded

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
