"""``/v1/admin/keys``: create and revoke tenant API keys (admin). A key is shown once;
it is revoked by its prefix (the first 10 characters, shown with it)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gateway.deps import AdminTenant, SessionDep
from registry import keys
from registry.errors import NotFound

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


class KeysRevoked(BaseModel):
    prefix: str
    revoked: int


@router.delete("/{prefix}", response_model=KeysRevoked)
def revoke_key(prefix: str, _: AdminTenant, session: SessionDep) -> KeysRevoked:
    """Revoke the live key(s) with this prefix; requests with them get 401 at once."""
    with session.begin():
        revoked = keys.revoke_key(session, key_prefix=prefix)
    if not revoked:
        raise NotFound(
            f"no live key has the prefix {prefix!r}; give the first 10 characters of the key, as shown when created.",
            code="key_not_found",
        )
    return KeysRevoked(prefix=prefix[:10], revoked=revoked)
