"""Webhook records: secrets, endpoints, a job's own receiver, and the deliveries to make.

A delivery row is written in the transaction that ends the job or batch it is
about, so an event is never lost between the database and the sender (the
outbox pattern); the gateway's dispatcher (``gateway.webhooks.dispatcher``)
sends what is due and writes each outcome back. Torch-free, HTTP-free.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from registry.errors import Conflict, InvalidRequest, NotFound
from registry.models import JobWebhook, WebhookDelivery, WebhookEndpoint, WebhookSecret, utcnow

JOB_EVENTS = {"succeeded": "job.completed", "failed": "job.failed", "cancelled": "job.cancelled"}
BATCH_EVENTS = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}
TEST_EVENT = "webhook.test"
EVENT_TYPES = (*JOB_EVENTS.values(), *BATCH_EVENTS.values(), TEST_EVENT)
METADATA_KEY = "webhook_url"  # a batch's own receiver, in its OpenAI metadata
MAX_ENDPOINTS = 16  # per tenant: each event is one delivery per endpoint


class SecretMissing(Conflict):
    code = "webhook_secret_missing"


class UnknownEventType(InvalidRequest):
    code = "webhook_event_type_unknown"


@dataclass(frozen=True)
class Ended:
    """A job that has just ended, as its webhook event needs it."""

    job_id: str
    tenant_id: int
    status: str


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def secret_of(session: Session, tenant_id: int) -> str | None:
    row = session.get(WebhookSecret, tenant_id)
    return row.secret if row is not None else None


def set_secret(session: Session, tenant_id: int, secret: str) -> None:
    """Create or replace the tenant's secret (a rotation: deliveries still pending are signed with it)."""
    row = session.get(WebhookSecret, tenant_id)
    if row is None:
        session.add(WebhookSecret(tenant_id=tenant_id, secret=secret, created_at=utcnow()))
    else:
        row.secret, row.created_at = secret, utcnow()
    session.flush()


def require_secret(session: Session, tenant_id: int) -> None:
    if secret_of(session, tenant_id) is None:
        raise SecretMissing(
            "this tenant has no webhook secret yet, so its webhooks could not be signed: create it first with "
            "POST /v1/webhooks/secret (or `loraq webhooks secret`); it is shown once."
        )


def check_event_types(types: Iterable[str]) -> list[str]:
    chosen = sorted(set(types))
    unknown = [t for t in chosen if t not in EVENT_TYPES]
    if unknown:
        raise UnknownEventType(f"unknown webhook event types {unknown}; choose among {list(EVENT_TYPES)}.")
    return chosen


def add_endpoint(session: Session, *, tenant_id: int, url: str, event_types: Sequence[str]) -> WebhookEndpoint:
    """A default receiver for the tenant's events (``event_types`` empty: all of them)."""
    require_secret(session, tenant_id)
    count = session.scalar(select(func.count()).where(WebhookEndpoint.tenant_id == tenant_id)) or 0
    if count >= MAX_ENDPOINTS:
        raise InvalidRequest(f"a tenant has at most {MAX_ENDPOINTS} webhook endpoints; delete one first.")
    row = WebhookEndpoint(
        id=f"we_{secrets.token_hex(12)}",
        tenant_id=tenant_id,
        url=url,
        event_types=check_event_types(event_types),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def endpoints(session: Session, tenant_id: int) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id).order_by(WebhookEndpoint.created_at)
    return list(session.scalars(query))


def delete_endpoint(session: Session, *, tenant_id: int, endpoint_id: str) -> None:
    row = session.get(WebhookEndpoint, endpoint_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(
            f"no webhook endpoint {endpoint_id!r} for this tenant; list them with GET /v1/webhooks/endpoints."
        )
    session.delete(row)


def set_job_webhooks(session: Session, urls: Mapping[str, str]) -> None:
    """Remember the receivers jobs named at submission (job id -> URL)."""
    session.add_all(JobWebhook(job_id=job_id, url=url) for job_id, url in urls.items())


def payload(*, event_id: str, event_type: str, created_at: datetime, data: Mapping[str, object]) -> str:
    """OpenAI's webhook event shape: ``{"object": "event", "id", "type", "created_at", "data"}``."""
    body = {"object": "event", "id": event_id, "type": event_type, "created_at": int(created_at.timestamp())}
    return json.dumps({**body, "data": dict(data)}, separators=(",", ":"))


def _subscribed(rows: Iterable[WebhookEndpoint], event_type: str) -> list[str]:
    return [r.url for r in rows if not r.event_types or event_type in r.event_types]


def _deliver(
    session: Session,
    *,
    tenant_id: int,
    urls: Iterable[str],
    event_type: str,
    subject_id: str,
    data: Mapping[str, object],
) -> list[WebhookDelivery]:
    now = utcnow()
    rows = []
    for url in dict.fromkeys(urls):  # one delivery per receiver, even if named twice
        event_id = new_event_id()
        body = payload(event_id=event_id, event_type=event_type, created_at=now, data=data)
        rows.append(
            WebhookDelivery(
                id=event_id,
                tenant_id=tenant_id,
                url=url,
                event_type=event_type,
                subject_id=subject_id,
                payload=body,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    session.add_all(rows)
    return rows


def jobs_ended(session: Session, ended: Sequence[Ended]) -> int:
    """Record the deliveries for jobs that just ended (call in the transaction that ends them). Costs
    two indexed reads for the whole set, none per job without a receiver."""
    if not ended:
        return 0
    rows = session.execute(
        select(JobWebhook.job_id, JobWebhook.url).where(JobWebhook.job_id.in_([e.job_id for e in ended]))
    )
    own = {job_id: url for job_id, url in rows}
    tenants = sorted({e.tenant_id for e in ended})
    by_tenant: dict[int, list[WebhookEndpoint]] = {}
    for row in session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id.in_(tenants))):
        by_tenant.setdefault(row.tenant_id, []).append(row)
    made = 0
    for job in ended:
        event_type = JOB_EVENTS.get(job.status)
        if event_type is None:
            continue
        urls = ([own[job.job_id]] if job.job_id in own else []) + _subscribed(
            by_tenant.get(job.tenant_id, []), event_type
        )
        if urls:
            data = {"id": job.job_id, "object": "job", "status": job.status}
            made += len(
                _deliver(
                    session, tenant_id=job.tenant_id, urls=urls, event_type=event_type, subject_id=job.job_id, data=data
                )
            )
    return made


def batch_ended(session: Session, *, batch_id: str, tenant_id: int, status: str, own_url: str | None) -> int:
    """Record the deliveries for a batch that just ended (its own ``webhook_url`` in metadata, and the
    tenant's endpoints)."""
    event_type = BATCH_EVENTS.get(status)
    if event_type is None:
        return 0
    urls = ([own_url] if own_url else []) + _subscribed(endpoints(session, tenant_id), event_type)
    data = {"id": batch_id, "object": "batch", "status": status}
    return len(_deliver(session, tenant_id=tenant_id, urls=urls, event_type=event_type, subject_id=batch_id, data=data))


def test_event(session: Session, *, tenant_id: int, url: str | None = None) -> list[WebhookDelivery]:
    """A ``webhook.test`` event to ``url``, or to every endpoint of the tenant."""
    require_secret(session, tenant_id)
    urls = [url] if url else [e.url for e in endpoints(session, tenant_id)]
    if not urls:
        raise InvalidRequest("this tenant has no webhook endpoint; add one, or name a url to test.")
    return _deliver(session, tenant_id=tenant_id, urls=urls, event_type=TEST_EVENT, subject_id="test", data={})


# --- the dispatcher's side -------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    """A delivery claimed for one attempt."""

    id: str
    tenant_id: int
    url: str
    payload: str
    attempts: int
    created_at: datetime


def claim_due(session: Session, *, limit: int, lease: timedelta, now: datetime | None = None) -> list[Due]:
    """Up to ``limit`` pending deliveries whose time has come, each claimed by moving its next attempt
    past ``lease`` with a conditional update: two gateways never send the same attempt, and a
    gateway that dies mid-attempt leaves it to be retried once the lease ends."""
    now = now or utcnow()
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    claimed = []
    for delivery_id, at in rows:
        done = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.next_attempt_at == at)
            .values(next_attempt_at=now + lease)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(delivery_id)
    if not claimed:
        return []
    found = session.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(claimed)))
    return [Due(r.id, r.tenant_id, r.url, r.payload, r.attempts, r.created_at) for r in found]


def settle(
    session: Session,
    *,
    delivery_id: str,
    status: int | None,
    error: str | None,
    delivered: bool,
    retry_at: datetime | None,
) -> None:
    """Write one attempt's outcome: delivered, pending until ``retry_at``, or failed (``retry_at`` None)."""
    now = utcnow()
    state = "delivered" if delivered else ("pending" if retry_at is not None else "failed")
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(
            status=state,
            attempts=WebhookDelivery.attempts + 1,
            last_attempt_at=now,
            last_status=status,
            last_error=error,
            next_attempt_at=retry_at or now,
        )
    )


def deliveries(
    session: Session, *, tenant_id: int, status: str | None = None, limit: int = 100
) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    return list(session.scalars(query.order_by(WebhookDelivery.created_at.desc()).limit(limit)))


def backlog(session: Session) -> dict[str, int]:
    """Deliveries pending and failed (index reads; delivered ones, the bulk of the table, are not counted)."""
    rows = session.execute(
        select(WebhookDelivery.status, func.count())
        .where(WebhookDelivery.status.in_(("pending", "failed")))
        .group_by(WebhookDelivery.status)
    )
    return {"pending": 0, "failed": 0} | {str(status): int(n) for status, n in rows}
