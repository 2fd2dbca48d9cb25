"""``/v1/admin/keys``: create tenant API keys (admin). The key is shown once."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gateway.deps import AdminTenant, SessionDep
from registry import keys

router = APIRouter(prefix="/v1/admin/keys", tags=["admin"])


class KeyCreate(BaseModel):
    tenant: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class KeyCreated(BaseModel):
    tenant: str
    key: str
    prefix: str


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, _: AdminTenant, session: SessionDep) -> KeyCreated:
    with session.begin():
        key = keys.create_key(session, tenant_name=body.tenant)
    return KeyCreated(tenant=body.tenant, key=key, prefix=key[:10])
