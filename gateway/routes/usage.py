"""``GET /v1/usage``: tokens and worker-seconds over a time range, grouped (the caller's tenant; admins: all)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from gateway.deps import CurrentTenant, SessionDep
from registry import usage
from registry.models import utcnow
from registry.usage import UsageRow

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("", response_model=list[UsageRow])
def get_usage(
    tenant: CurrentTenant,
    session: SessionDep,
    since: Annotated[datetime | None, Query(description="ISO time, inclusive; default 24 hours ago.")] = None,
    until: Annotated[datetime | None, Query(description="ISO time, exclusive; default now.")] = None,
    group_by: Annotated[str, Query(description="Subset of tenant,adapter,version.")] = "tenant,adapter,version",
) -> list[UsageRow]:
    end = _utc(until) if until else utcnow()
    start = _utc(since) if since else end - timedelta(days=1)
    return usage.report(session, tenant=tenant, since=start, until=end, group_by=usage.parse_groups(group_by))


def _utc(value: datetime) -> datetime:
    """A time without a zone is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
