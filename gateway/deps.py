"""FastAPI dependencies: settings, sessions, the authenticated tenant.

Authentication and tenant scoping happen here once; handlers receive a
``Tenant`` and pass it to the registry's scoped queries.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from gateway.job_events import JobEvents
from gateway.limits import ModelLimits
from gateway.settings import GatewaySettings
from registry import keys
from registry.errors import Forbidden, Unauthenticated
from registry.models import Tenant
from workers.contract.messages import Publisher

ADMIN_TENANT = "_admin"  # tenant names of keys cannot start with "_", so no key can join it
_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


def get_sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


def get_session(sessions: Annotated[sessionmaker[Session], Depends(get_sessions)]) -> Iterator[Session]:
    with sessions() as session:
        yield session


def get_limits(request: Request) -> ModelLimits:
    limits: ModelLimits = request.app.state.limits
    return limits


def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


def get_job_events(request: Request) -> JobEvents:
    events: JobEvents = request.app.state.job_events
    return events


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
LimitsDep = Annotated[ModelLimits, Depends(get_limits)]
JobEventsDep = Annotated[JobEvents, Depends(get_job_events)]


def current_tenant(
    settings: SettingsDep,
    sessions: Annotated[sessionmaker[Session], Depends(get_sessions)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("Missing API key; send 'Authorization: Bearer <key>'.", code="missing_api_key")
    key = credentials.credentials
    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    with sessions() as session, session.begin():
        if admin and hmac.compare_digest(key.encode(), admin.encode()):
            return keys.ensure_tenant(session, name=ADMIN_TENANT, is_admin=True)
        return keys.authenticate(session, key=key)


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]


def admin_tenant(tenant: CurrentTenant) -> Tenant:
    if not tenant.is_admin:
        raise Forbidden("This endpoint needs the admin key (LORAQ_ADMIN_KEY).", code="admin_required")
    return tenant


AdminTenant = Annotated[Tenant, Depends(admin_tenant)]
