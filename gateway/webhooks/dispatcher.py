"""The gateway's delivery loop: send what is due, each attempt on a sender thread, outcomes written back.

One loop per gateway process (several gateways may run it: deliveries are
claimed by a conditional update, ``registry.webhooks.claim_due``). It claims
only as many deliveries as it has free sender threads, so a receiver that
never answers holds one thread for one timeout and the others keep going.
Outcomes: a 2xx is ``delivered``; no answer, 408/409/425/429 or a 5xx is
retried after an exponential, jittered delay (``schedule``); any other answer,
or too many attempts or too old an event, is ``failed``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from gateway.loop import Loop
from gateway.webhooks.schedule import RetryPolicy, retryable
from gateway.webhooks.sender import Attempt, attempt, make_client
from registry import webhooks
from registry.db import transaction
from registry.models import utcnow

log = logging.getLogger(__name__)


class Dispatcher(Loop):
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        allow: Sequence[str] = (),
        senders: int = 8,
        timeout_s: float = 5.0,
        poll_s: float = 0.5,
        policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__("webhooks", interval_s=poll_s)
        self.sessions = sessions
        self.allow = list(allow)
        self.senders = senders
        self.policy = policy or RetryPolicy()
        self.lease = timedelta(seconds=timeout_s + 30)  # past one attempt's longest time, with room
        self.client = make_client(timeout_s=timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=senders, thread_name_prefix="loraq-webhook")
        self._busy = 0
        self._lock = threading.Lock()

    def tick(self) -> int:
        """Claim what is due, up to the free sender threads, and start each attempt; returns how many."""
        with self._lock:
            free = self.senders - self._busy
        if free <= 0:
            return 0
        with transaction(self.sessions) as session:
            due = webhooks.claim_due(session, limit=free, lease=self.lease)
            secrets = {t: webhooks.secret_of(session, t) for t in {d.tenant_id for d in due}}
        for delivery in due:
            with self._lock:
                self._busy += 1
            self._pool.submit(self._send, delivery, secrets.get(delivery.tenant_id))
        return len(due)

    def _send(self, delivery: webhooks.Due, secret: str | None) -> None:
        try:
            if secret is None:
                outcome = Attempt(
                    status=None, error="webhook_secret_missing: the tenant has no secret", error_is_final=True
                )
            else:
                outcome = attempt(
                    self.client,
                    url=delivery.url,
                    secret=secret,
                    msg_id=delivery.id,
                    body=delivery.payload.encode(),
                    allow=self.allow,
                )
            self._settle(delivery, outcome)
        except Exception:
            log.warning("webhook %s: could not record its attempt; it is retried when its lease ends", delivery.id)
        finally:
            with self._lock:
                self._busy -= 1
            self.wake()  # a thread is free: claim the next one now

    def _settle(self, delivery: webhooks.Due, outcome: Attempt) -> None:
        attempts = delivery.attempts + 1
        age_s = (utcnow() - delivery.created_at).total_seconds()
        again = not outcome.delivered and retryable(outcome.status) and not outcome.error_is_final
        retry_at = None
        if again and not self.policy.gives_up(attempts=attempts, age_s=age_s):
            retry_at = utcnow() + timedelta(seconds=self.policy.delay_s(attempts))
        label = "delivered" if outcome.delivered else ("retry" if retry_at else "failed")
        with transaction(self.sessions) as session:
            webhooks.settle(
                session,
                delivery_id=delivery.id,
                status=outcome.status,
                error=outcome.error,
                delivered=outcome.delivered,
                retry_at=retry_at,
            )
        if label != "delivered":
            log.info("webhook %s to %s: %s (%s)", delivery.id, delivery.url, label, outcome.error or outcome.status)

    def close(self) -> None:
        self.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
