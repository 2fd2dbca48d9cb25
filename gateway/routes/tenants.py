"""``/v1/admin/tenants``: create a tenant and set its quotas (admin)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.deps import AdminTenant, SessionDep
from registry import quotas

router = APIRouter(prefix="/v1/admin/tenants", tags=["admin"])


class TenantQuotas(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Bounded by their columns (INTEGER, BIGINT): a larger number is a 422, not a database error.
    max_queued_jobs: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="Jobs queued or running at once; null: no limit."
    )
    max_tokens_per_day: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="Prompt + completion tokens per UTC day; null: no limit."
    )


class TenantView(TenantQuotas):
    name: str


@router.put("/{name}", response_model=TenantView)
def put_tenant(name: str, body: TenantQuotas, _: AdminTenant, session: SessionDep) -> TenantView:
    """Create the tenant if it does not exist and set its quotas; over a quota, submissions get 429."""
    with session.begin():
        tenant = quotas.set_quotas(
            session, name=name, max_queued_jobs=body.max_queued_jobs, max_tokens_per_day=body.max_tokens_per_day
        )
        return TenantView(
            name=tenant.name, max_queued_jobs=tenant.max_queued_jobs, max_tokens_per_day=tenant.max_tokens_per_day
        )
