"""``/v1/webhooks``: the caller's signing secret, default endpoints, test events and deliveries.

The secret is shown once, when created or rotated; receivers verify with it
(any Standard Webhooks library). Endpoint URLs are checked against the target
guard when added (``gateway.webhooks.targets``) and again before each attempt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from gateway.deps import CurrentTenant, SessionDep, SettingsDep
from gateway.webhooks import signing
from gateway.webhooks.targets import check_target
from registry import webhooks
from registry.models import WebhookDelivery, WebhookEndpoint

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class SecretShown(BaseModel):
    secret: str = Field(description="Shown once: store it where your receiver verifies signatures.")


@router.post("/secret", status_code=201, response_model=SecretShown)
def rotate_secret(tenant: CurrentTenant, session: SessionDep) -> SecretShown:
    """Create the tenant's signing secret, or replace it (pending deliveries are signed with the new one)."""
    secret = signing.new_secret()
    with session.begin():
        webhooks.set_secret(session, tenant.id, secret)
    return SecretShown(secret=secret)


class EndpointCreate(BaseModel):
    url: str = Field(max_length=2000)
    event_types: list[str] = Field(default_factory=list, description="Empty: every event type.", max_length=16)


class EndpointOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    created_at: datetime

    @classmethod
    def of(cls, row: WebhookEndpoint) -> EndpointOut:
        return cls(id=row.id, url=row.url, event_types=row.event_types, created_at=row.created_at)


@router.post("/endpoints", status_code=201, response_model=EndpointOut)
def add_endpoint(
    body: EndpointCreate, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep
) -> EndpointOut:
    check_target(body.url, allow=settings.webhook_allow)
    with session.begin():
        row = webhooks.add_endpoint(session, tenant_id=tenant.id, url=body.url, event_types=body.event_types)
        return EndpointOut.of(row)


@router.get("/endpoints", response_model=list[EndpointOut])
def list_endpoints(tenant: CurrentTenant, session: SessionDep) -> list[EndpointOut]:
    return [EndpointOut.of(r) for r in webhooks.endpoints(session, tenant.id)]


@router.delete("/endpoints/{endpoint_id}", status_code=204)
def delete_endpoint(endpoint_id: str, tenant: CurrentTenant, session: SessionDep) -> None:
    with session.begin():
        webhooks.delete_endpoint(session, tenant_id=tenant.id, endpoint_id=endpoint_id)


class DeliveryOut(BaseModel):
    id: str
    url: str
    event_type: str
    subject_id: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=row.id,
            url=row.url,
            event_type=row.event_type,
            subject_id=row.subject_id,
            status=row.status,
            attempts=row.attempts,
            created_at=row.created_at,
            next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
            last_attempt_at=row.last_attempt_at,
            last_status=row.last_status,
            last_error=row.last_error,
        )


class TestRequest(BaseModel):
    url: str | None = Field(default=None, max_length=2000, description="Default: every endpoint of the tenant.")


@router.post("/test", status_code=202, response_model=list[DeliveryOut])
def send_test(
    body: TestRequest, request: Request, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep
) -> list[DeliveryOut]:
    """A ``webhook.test`` event, delivered as any other (signed, retried, listed in deliveries)."""
    if body.url:
        check_target(body.url, allow=settings.webhook_allow)
    with session.begin():
        rows = webhooks.test_event(session, tenant_id=tenant.id, url=body.url)
        out = [DeliveryOut.of(r) for r in rows]
    request.app.state.webhooks.wake()
    return out


@router.get("/deliveries", response_model=list[DeliveryOut])
def list_deliveries(
    tenant: CurrentTenant,
    session: SessionDep,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryOut]:
    """The tenant's latest deliveries, newest first."""
    return [DeliveryOut.of(r) for r in webhooks.deliveries(session, tenant_id=tenant.id, status=status, limit=limit)]
