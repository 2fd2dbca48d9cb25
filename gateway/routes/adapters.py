"""``/v1/adapters``: register a version (admin), list what the caller may use."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter
from sqlalchemy import select

from gateway.deps import AdminTenant, CurrentTenant, SessionDep, SettingsDep
from registry import adapters
from registry.adapter_check import validate_adapter
from registry.models import Adapter, Tenant
from registry.queues import queue_name
from registry.schemas import AdapterCreate, AdapterVersionView, AdapterView

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


def base_model_name(path: Path) -> str:
    """The base's recorded name (``_name_or_path`` in its config.json), else its directory name."""
    try:
        name = json.loads((path / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError):
        name = None
    return str(name or path.name)


def _view(session: SessionDep, adapter: Adapter, owners: dict[int, str], *, viewer: Tenant) -> AdapterView:
    versions = adapters.versions_of(session, adapter)
    return AdapterView(
        name=adapter.name,
        public=adapter.public,
        owner=owners.get(adapter.owner_tenant_id) if adapter.owner_tenant_id else None,
        queue=queue_name(adapter.name),
        routes=adapters.route_weights(session, adapter),
        versions=[
            AdapterVersionView(
                version=v.version,
                status=v.status,
                uri=v.uri if viewer.is_admin else None,
                sha256=v.sha256,
                size_bytes=v.size_bytes,
                r=v.r,
                alpha=v.alpha,
                target_modules=v.target_modules,
                created_at=v.created_at,
            )
            for v in versions
        ],
    )


def _owner_names(session: SessionDep) -> dict[int, str]:
    return {t.id: t.name for t in session.scalars(select(Tenant))}


@router.post("", status_code=201, response_model=AdapterView)
def register_adapter(
    body: AdapterCreate, admin: AdminTenant, session: SessionDep, settings: SettingsDep
) -> AdapterView:
    """Validate a PEFT LoRA against the base model, record a new version, route 100 % to it."""
    info = validate_adapter(body.uri, base_dir=settings.base_model, max_bytes=settings.max_adapter_bytes)
    with session.begin():
        base = adapters.ensure_base_model(
            session, name=base_model_name(settings.base_model), path=str(settings.base_model)
        )
        adapters.register_version(
            session,
            name=body.name,
            uri=info.path.as_uri(),
            info=info,
            base=base,
            owner=admin,
            public=body.public,
        )
    with session.begin():
        adapter = adapters.get_visible(session, tenant=admin, name=body.name)
        return _view(session, adapter, _owner_names(session), viewer=admin)


@router.get("", response_model=list[AdapterView])
def list_adapters(tenant: CurrentTenant, session: SessionDep) -> list[AdapterView]:
    with session.begin():
        owners = _owner_names(session)
        return [_view(session, a, owners, viewer=tenant) for a in adapters.list_visible(session, tenant=tenant)]
