"""``/v1/adapters``: register a version (admin), list what the caller may use."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from sqlalchemy import select

from gateway.deps import AdminTenant, CurrentTenant, SessionDep, SettingsDep
from registry import adapters, keys, routes
from registry.artifacts.checks import validate_adapter
from registry.artifacts.remote import validate_remote
from registry.artifacts.uri import is_remote, uri_of
from registry.errors import Conflict
from registry.models import Adapter, Tenant
from registry.schemas import AdapterCreate, AdapterVersionView, AdapterView, RouteSet, ShadowSpec, VersionStats
from registry.stats import version_stats
from workers.contract.names import queue_name

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


def _view(session: SessionDep, adapter: Adapter, owners: dict[int, str], *, viewer: Tenant) -> AdapterView:
    versions = adapters.versions_of(session, adapter)
    return AdapterView(
        name=adapter.name,
        public=adapter.public,
        owner=owners.get(adapter.owner_tenant_id) if adapter.owner_tenant_id else None,
        queue=queue_name(adapter.name),
        routes=adapters.route_weights(session, adapter),
        shadow=_shadow(session, adapter),
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


def _shadow(session: SessionDep, adapter: Adapter) -> ShadowSpec | None:
    spec = routes.current(session, adapter)
    if spec.shadow_version is None:
        return None
    return ShadowSpec(version=spec.shadow_version, fraction=spec.shadow_fraction)


def _owner_names(session: SessionDep) -> dict[int, str]:
    return {t.id: t.name for t in session.scalars(select(Tenant))}


@router.post("", status_code=201, response_model=AdapterView)
def register_adapter(
    body: AdapterCreate, admin: AdminTenant, session: SessionDep, settings: SettingsDep
) -> AdapterView:
    """Validate a PEFT LoRA against the base model, record a new version, route 100 % to it."""
    if body.name == adapters.BASE_ADAPTER:
        raise Conflict(
            f"adapter name {body.name!r} is reserved for the base model without an adapter; choose another.",
            code="adapter_name_reserved",
        )
    if is_remote(body.uri):
        info = validate_remote(
            body.uri, roots=settings.roots(), base_dir=settings.base_model, max_bytes=settings.max_adapter_bytes
        )
        uri = body.uri
    else:
        info = validate_adapter(
            body.uri, base_dir=settings.base_model, max_bytes=settings.max_adapter_bytes, roots=settings.local_roots()
        )
        uri = uri_of(info.path)
    with session.begin():
        base = adapters.ensure_base_model(session, name=settings.base_model_name(), path=str(settings.base_model))
        adapters.register_version(
            session,
            name=body.name,
            uri=uri,
            info=info,
            base=base,
            owner=keys.ensure_tenant(session, name=body.owner) if body.owner else admin,
            public=body.public,
            staged=body.staged,
        )
    with session.begin():
        adapter = adapters.get_visible(session, tenant=admin, name=body.name)
        return _view(session, adapter, _owner_names(session), viewer=admin)


@router.get("", response_model=list[AdapterView])
def list_adapters(tenant: CurrentTenant, session: SessionDep) -> list[AdapterView]:
    with session.begin():
        owners = _owner_names(session)
        return [_view(session, a, owners, viewer=tenant) for a in adapters.list_visible(session, tenant=tenant)]


def _changed(session: SessionDep, admin: AdminTenant, name: str, change: Callable[[Adapter], object]) -> AdapterView:
    """Apply one route change in one transaction, tell the workers, return the adapter as it is now."""
    with session.begin():
        adapter = adapters.get_visible(session, tenant=admin, name=name)
        change(adapter)
    with session.begin():
        adapter = adapters.get_visible(session, tenant=admin, name=name)
        return _view(session, adapter, _owner_names(session), viewer=admin)


@router.get("/{name}/stats", response_model=list[VersionStats])
def stats(name: str, tenant: CurrentTenant, session: SessionDep) -> list[VersionStats]:
    """Per version: jobs by status, error rate, run time and queue wait percentiles, tokens."""
    with session.begin():
        return version_stats(session, adapters.get_visible(session, tenant=tenant, name=name))


@router.put("/{name}/route", response_model=AdapterView)
def set_route(name: str, body: RouteSet, admin: AdminTenant, session: SessionDep) -> AdapterView:
    """Split traffic over versions (weights sum to 100), optionally shadowing a fraction onto another."""
    spec = routes.RouteSpec(
        weights=body.weights,
        shadow_version=body.shadow.version if body.shadow else None,
        shadow_fraction=body.shadow.fraction if body.shadow else 0.0,
    )
    return _changed(session, admin, name, lambda a: routes.set_route(session, a, spec, actor=admin.name))


@router.post("/{name}/promote", response_model=AdapterView)
def promote(name: str, admin: AdminTenant, session: SessionDep) -> AdapterView:
    """The canary (the newest version with traffic) takes 100 %."""
    return _changed(session, admin, name, lambda a: routes.promote(session, a, actor=admin.name))


@router.post("/{name}/rollback", response_model=AdapterView)
def rollback(name: str, admin: AdminTenant, session: SessionDep) -> AdapterView:
    """Undo the newest route change; the next job already follows the route before it."""
    return _changed(session, admin, name, lambda a: routes.rollback(session, a, actor=admin.name))


@router.post("/{name}/versions/{version}/retire", response_model=AdapterView)
def retire(name: str, version: int, admin: AdminTenant, session: SessionDep) -> AdapterView:
    """Stop routing to a version that takes no traffic; running jobs finish."""
    return _changed(session, admin, name, lambda a: routes.retire(session, a, version=version, actor=admin.name))
