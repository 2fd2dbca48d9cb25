"""API keys: generated once, shown once, stored as a SHA-256 digest.

Keys are 256-bit random tokens, so a plain hash (no salt, no KDF) is enough
and lets authentication be one indexed lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry.errors import Unauthenticated
from registry.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "lq-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def ensure_tenant(session: Session, *, name: str, is_admin: bool = False) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is not None:
        return tenant
    try:
        with session.begin_nested():  # a concurrent first request may create it too
            tenant = Tenant(name=name, is_admin=is_admin)
            session.add(tenant)
    except IntegrityError:
        tenant = session.scalar(select(Tenant).where(Tenant.name == name))
        assert tenant is not None
    return tenant


def create_key(session: Session, *, tenant_name: str) -> str:
    """Create the tenant if needed and return a new key for it (never stored in clear)."""
    tenant = ensure_tenant(session, name=tenant_name)
    key = new_key()
    session.add(ApiKey(tenant_id=tenant.id, prefix=key[:10], key_hash=hash_key(key)))
    session.flush()
    return key


def authenticate(session: Session, *, key: str) -> Tenant:
    """The tenant owning ``key``; :class:`Unauthenticated` if unknown or revoked."""
    digest = hash_key(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        raise Unauthenticated("API key not recognised; create one with `loraq keys create TENANT`.")
    tenant = session.get(Tenant, row.tenant_id)
    assert tenant is not None  # FK
    return tenant


def revoke_key(session: Session, *, key_prefix: str) -> int:
    """Revoke every live key starting with ``key_prefix``; returns how many."""
    rows = session.scalars(select(ApiKey).where(ApiKey.prefix == key_prefix[:10], ApiKey.revoked_at.is_(None))).all()
    for row in rows:
        row.revoked_at = utcnow()
    return len(rows)
