"""The base model as a "model" of its own: jobs with no adapter, through the reserved adapter ``base``.

It is created on first use (``registry.adapters.ensure_base_adapter``), so a
deployment that never asks for the bare base model never sees it; workers
learn of its queue ``lora.base`` through the routes epoch like any new adapter.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from gateway.deps import ADMIN_TENANT
from gateway.settings import GatewaySettings
from registry import adapters, keys
from registry.adapters import BASE_ADAPTER


def aliases(settings: GatewaySettings) -> dict[str, str]:
    """OpenAI ``model`` names that mean the base model with no adapter."""
    return {settings.base_model_name(): BASE_ADAPTER}


def ensure(session: Session, *, settings: GatewaySettings) -> bool:
    """Create the reserved adapter if it does not exist yet (in the caller's transaction)."""
    base = adapters.ensure_base_model(session, name=settings.base_model_name(), path=str(settings.base_model))
    owner = keys.ensure_tenant(session, name=ADMIN_TENANT, is_admin=True)
    return adapters.ensure_base_adapter(session, base=base, owner=owner)


def ensure_committed(session: Session, *, settings: GatewaySettings) -> None:
    with session.begin():
        ensure(session, settings=settings)
