"""The webhook outbox on both databases: deliveries claimed once across gateways, settled, listed."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from registry import webhooks
from registry.db import transaction
from registry.models import utcnow
from tests.registry.test_adapters_and_jobs import World


def test_two_gateways_claiming_at_once_never_take_the_same_delivery(
    session_factory: sessionmaker[Session], world: World
) -> None:
    with transaction(session_factory) as session:
        webhooks.set_secret(session, world.acme.id, "whsec_" + "A" * 44)
        for i in range(40):
            webhooks.test_event(session, tenant_id=world.acme.id, url=f"https://example.com/{i}")
    claimed: list[list[str]] = [[], []]
    go = threading.Barrier(2)

    def gateway(slot: int) -> None:
        go.wait()
        for _ in range(200):  # a round that loses every race claims nothing; the next one goes on
            with transaction(session_factory) as session:
                due = webhooks.claim_due(session, limit=3, lease=timedelta(minutes=1))
                left = due or webhooks.claim_due(session, limit=1, lease=timedelta(0))
            claimed[slot].extend(d.id for d in due)
            if not left:
                return

    threads = [threading.Thread(target=gateway, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    together = claimed[0] + claimed[1]
    assert len(together) == len(set(together)) == 40


def test_a_failed_attempt_waits_for_its_retry_and_a_final_one_ends_the_delivery(
    session_factory: sessionmaker[Session], world: World
) -> None:
    with transaction(session_factory) as session:
        webhooks.set_secret(session, world.acme.id, "whsec_" + "A" * 44)
        (row,) = webhooks.test_event(session, tenant_id=world.acme.id, url="https://example.com/h")
        delivery_id = row.id
    with transaction(session_factory) as session:
        (due,) = webhooks.claim_due(session, limit=5, lease=timedelta(minutes=1))
        webhooks.settle(
            session,
            delivery_id=due.id,
            status=503,
            error="busy",
            delivered=False,
            retry_at=utcnow() + timedelta(hours=1),
        )
    with transaction(session_factory) as session:
        assert webhooks.claim_due(session, limit=5, lease=timedelta(minutes=1)) == []  # not before its retry
        assert webhooks.backlog(session) == {"pending": 1, "failed": 0}
        webhooks.settle(session, delivery_id=delivery_id, status=410, error=None, delivered=False, retry_at=None)
    with transaction(session_factory) as session:
        (listed,) = webhooks.deliveries(session, tenant_id=world.acme.id)
        assert (listed.status, listed.attempts, listed.last_status) == ("failed", 2, 410)
        assert webhooks.backlog(session) == {"pending": 0, "failed": 1}
        assert webhooks.deliveries(session, tenant_id=world.globex.id) == []  # tenants see their own
