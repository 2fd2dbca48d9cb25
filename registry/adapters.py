"""Adapter repository: register versions, route to them, list what a tenant sees.

Tenant scoping lives in :func:`visible_to` alone; every read goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Select, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry import routes
from registry.artifacts.checks import AdapterInfo
from registry.errors import Conflict, NotFound
from registry.models import Adapter, AdapterVersion, BaseModelRow, Route, Tenant, utcnow
from registry.routing import choose_version, in_shadow

BASE_ADAPTER = "base"  # reserved name: the base model with no adapter (slot 0); its queue is lora.base
BASE_URI = "base:"  # the uri of its one version: nothing to load


@dataclass(frozen=True)
class ResolvedAdapter:
    """The version a job will run on, with what a worker needs to load it."""

    adapter_id: int
    name: str
    version_id: int
    version: int
    uri: str
    sha256: str
    has_shadow: bool = False  # the adapter's route names a shadow version (checked per job)


def visible_to(tenant: Tenant) -> Select[Adapter]:
    """Adapters ``tenant`` may see and use: public ones and its own (admins see all)."""
    query = select(Adapter)
    if tenant.is_admin:
        return query
    return query.where(or_(Adapter.public.is_(True), Adapter.owner_tenant_id == tenant.id))


def ensure_base_model(session: Session, *, name: str, path: str) -> BaseModelRow:
    row = session.scalar(select(BaseModelRow).where(BaseModelRow.name == name))
    if row is None:
        row = BaseModelRow(name=name, path=path)
        session.add(row)
        session.flush()
    return row


def register_version(
    session: Session,
    *,
    name: str,
    uri: str,
    info: AdapterInfo,
    base: BaseModelRow,
    owner: Tenant,
    public: bool,
    staged: bool = False,
) -> AdapterVersion:
    """Add a version (creating the adapter on first use) and route 100 % to it, or, ``staged``,
    only record it: a later route that names it activates it.

    Canary splits are set afterwards through the routes API; registering is
    the simple "this is now what serves" operation.
    """
    adapter = session.scalar(select(Adapter).where(Adapter.name == name).with_for_update())
    if adapter is None:
        adapter = Adapter(name=name, base_model_id=base.id, owner_tenant_id=owner.id, public=public)
        session.add(adapter)
        session.flush()
    elif adapter.owner_tenant_id not in (None, owner.id) and not owner.is_admin:
        raise Conflict(
            f"adapter name {name!r} belongs to another tenant; choose another name.",
            code="adapter_name_taken",
        )
    latest = session.scalar(select(func.max(AdapterVersion.version)).where(AdapterVersion.adapter_id == adapter.id))
    now = utcnow()
    version = AdapterVersion(
        adapter_id=adapter.id,
        version=(latest or 0) + 1,
        uri=uri,
        sha256=info.sha256,
        size_bytes=info.size_bytes,
        r=info.r,
        alpha=info.alpha,
        target_modules=info.target_modules,
        status="staged" if staged else "active",
        created_by=owner.name,
        activated_at=None if staged else now,
    )
    session.add(version)
    session.flush()
    if staged:
        return version
    shadow = routes.current(session, adapter)
    spec = routes.RouteSpec(
        weights={version.version: 100}, shadow_version=shadow.shadow_version, shadow_fraction=shadow.shadow_fraction
    )
    routes.apply(session, adapter, spec, action="register", actor=owner.name)
    return version


def ensure_base_adapter(session: Session, *, base: BaseModelRow, owner: Tenant) -> bool:
    """Create the reserved :data:`BASE_ADAPTER` on its first use (public, one version that loads
    nothing), so jobs on the bare base model have a queue, a version and stats like any other.
    Returns whether it was created now; a concurrent creation elsewhere is not an error."""
    if session.scalar(select(Adapter.id).where(Adapter.name == BASE_ADAPTER)) is not None:
        return False
    info = AdapterInfo(path=Path(BASE_URI), r=0, alpha=0.0, target_modules=[], sha256="0" * 64, size_bytes=0)
    try:
        with session.begin_nested():
            register_version(session, name=BASE_ADAPTER, uri=BASE_URI, info=info, base=base, owner=owner, public=True)
    except IntegrityError:
        return False
    return True


def get_visible(session: Session, *, tenant: Tenant, name: str) -> Adapter:
    adapter = session.scalar(visible_to(tenant).where(Adapter.name == name))
    if adapter is None:
        raise NotFound(
            f"adapter {name!r} does not exist; list adapters with `loraq adapters list`.",
            code="adapter_not_found",
        )
    return adapter


def resolve(session: Session, *, tenant: Tenant, name: str, routing_key: str) -> ResolvedAdapter:
    """The version of adapter ``name`` that a job with ``routing_key`` runs on."""
    return Resolver(session, tenant=tenant)(name, routing_key)


class Resolver:
    """:func:`resolve` for many jobs: each adapter's route is read once (bulk ingest resolves
    thousands of lines per transaction). Live for one transaction only: routes change."""

    def __init__(self, session: Session, *, tenant: Tenant) -> None:
        self._session = session
        self._tenant = tenant
        self._routes: dict[str, list[tuple[int, ResolvedAdapter]]] = {}  # name -> its (weight, version) legs
        self._refused: dict[str, NotFound] = {}

    def __call__(self, name: str, routing_key: str) -> ResolvedAdapter:
        if name in self._refused:
            raise self._refused[name]
        legs = self._routes.get(name)
        if legs is None:
            try:
                legs = self._routes[name] = self._load(name)
            except NotFound as exc:
                self._refused[name] = exc
                raise
        if len(legs) == 1:  # no canary: every key gets the one version, no hashing
            return legs[0][1]
        chosen = choose_version([(r.version_id, w) for w, r in legs], routing_key)
        return next(r for _, r in legs if r.version_id == chosen)

    def _load(self, name: str) -> list[tuple[int, ResolvedAdapter]]:
        adapter = get_visible(self._session, tenant=self._tenant, name=name)
        legs = self._session.execute(
            select(AdapterVersion, Route.weight)
            .join(Route, AdapterVersion.id == Route.version_id)
            .where(Route.adapter_id == adapter.id, AdapterVersion.status == "active", Route.weight > 0)
        ).all()
        if not legs:
            raise NotFound(
                f"adapter {name!r} has no active version; register one.",
                code="adapter_not_routable",
            )
        shadow = adapter.shadow_version_id is not None
        return [
            (w, ResolvedAdapter(adapter.id, adapter.name, v.id, v.version, v.uri, v.sha256, has_shadow=shadow))
            for v, w in legs
        ]


def resolve_shadow(session: Session, *, resolved: ResolvedAdapter, job_id: str) -> ResolvedAdapter | None:
    """The shadow version this job also runs on, if its adapter has one and the job falls in its fraction."""
    adapter = session.get(Adapter, resolved.adapter_id)
    if adapter is None or adapter.shadow_version_id is None or not in_shadow(job_id, adapter.shadow_fraction):
        return None
    version = session.get(AdapterVersion, adapter.shadow_version_id)
    if version is None or version.status != "active" or version.id == resolved.version_id:
        return None
    return ResolvedAdapter(adapter.id, adapter.name, version.id, version.version, version.uri, version.sha256)


def list_visible(session: Session, *, tenant: Tenant) -> list[Adapter]:
    return list(session.scalars(visible_to(tenant).order_by(Adapter.name)))


def versions_of(session: Session, adapter: Adapter) -> list[AdapterVersion]:
    return list(
        session.scalars(
            select(AdapterVersion).where(AdapterVersion.adapter_id == adapter.id).order_by(AdapterVersion.version)
        )
    )


def route_weights(session: Session, adapter: Adapter) -> dict[int, int]:
    """version number -> weight percent."""
    rows = session.execute(
        select(AdapterVersion.version, Route.weight)
        .join(AdapterVersion, AdapterVersion.id == Route.version_id)
        .where(Route.adapter_id == adapter.id)
    ).all()
    return {v: w for v, w in rows}


def active_adapter_names(session: Session) -> list[str]:
    """Names with at least one routed active version: the queues workers should consume."""
    rows = session.scalars(
        select(Adapter.name)
        .join(Route, Route.adapter_id == Adapter.id)
        .join(AdapterVersion, AdapterVersion.id == Route.version_id)
        .where(AdapterVersion.status == "active", Route.weight > 0)
        .distinct()
        .order_by(Adapter.name)
    )
    return list(rows)
