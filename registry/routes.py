"""Changing what serves: canary weights, shadow, promote, rollback, retire.

Every change writes the adapter's whole route (the ``routes`` legs and the
shadow columns) and appends it to ``route_changes``, so the current route is
always the newest change and ``rollback`` is "drop the newest change and
apply the one before". The rules that do not need the database (weights sum
to 100, fractions in range, which version promote picks) are plain
functions, unit-tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from registry.errors import Conflict, InvalidRequest, NotFound
from registry.models import Adapter, AdapterVersion, Route, RouteChange, utcnow


@dataclass(frozen=True)
class RouteSpec:
    """An adapter's traffic split by version number, and an optional shadow."""

    weights: dict[int, int]
    shadow_version: int | None = None
    shadow_fraction: float = 0.0


def check_spec(spec: RouteSpec) -> None:
    """Refuse a route that cannot be served, with a message that says how to fix it."""
    if not spec.weights or any(w < 0 or w > 100 for w in spec.weights.values()):
        raise InvalidRequest("give each version a weight from 0 to 100, e.g. 1=90 2=10.", code="route_invalid")
    if sum(spec.weights.values()) != 100:
        raise InvalidRequest(
            f"route weights sum to {sum(spec.weights.values())}; they must sum to 100.", code="route_invalid"
        )
    if spec.shadow_version is None and spec.shadow_fraction:
        raise InvalidRequest("a shadow fraction needs a shadow version.", code="route_invalid")
    if spec.shadow_version is not None and not 0 < spec.shadow_fraction <= 1:
        raise InvalidRequest("the shadow fraction must be in (0, 1], e.g. 0.05.", code="route_invalid")


def promoted(weights: Mapping[int, int]) -> dict[int, int]:
    """The canary (the newest version with traffic) takes 100 %."""
    live = [v for v, w in weights.items() if w > 0]
    if not live:
        raise InvalidRequest("the route sends traffic nowhere; set weights first.", code="route_invalid")
    return {max(live): 100}


def current(session: Session, adapter: Adapter) -> RouteSpec:
    rows = session.execute(
        select(AdapterVersion.version, Route.weight)
        .join(AdapterVersion, AdapterVersion.id == Route.version_id)
        .where(Route.adapter_id == adapter.id)
    ).all()
    shadow = session.get(AdapterVersion, adapter.shadow_version_id) if adapter.shadow_version_id else None
    return RouteSpec(
        weights={v: w for v, w in rows},
        shadow_version=shadow.version if shadow else None,
        shadow_fraction=adapter.shadow_fraction if shadow else 0.0,
    )


def apply(session: Session, adapter: Adapter, spec: RouteSpec, *, action: str, actor: str) -> None:
    """Make ``spec`` the adapter's route and record the change."""
    check_spec(spec)
    versions = _versions(session, adapter, {*spec.weights, *([spec.shadow_version] if spec.shadow_version else [])})
    now = utcnow()
    for row in versions.values():
        if row.status == "staged":  # routing traffic (or a shadow) to a staged version activates it
            row.status, row.activated_at = "active", now
    session.execute(delete(Route).where(Route.adapter_id == adapter.id))
    for number, weight in sorted(spec.weights.items()):
        if weight > 0:
            session.add(Route(adapter_id=adapter.id, version_id=versions[number].id, weight=weight, updated_at=now))
    adapter.shadow_version_id = versions[spec.shadow_version].id if spec.shadow_version else None
    adapter.shadow_fraction = spec.shadow_fraction
    session.add(
        RouteChange(
            adapter_id=adapter.id,
            weights={str(v): w for v, w in sorted(spec.weights.items()) if w > 0},
            shadow_version=spec.shadow_version,
            shadow_fraction=spec.shadow_fraction,
            action=action,
            actor=actor,
            created_at=now,
        )
    )
    session.flush()


def set_route(session: Session, adapter: Adapter, spec: RouteSpec, *, actor: str) -> None:
    apply(session, adapter, spec, action="set", actor=actor)


def promote(session: Session, adapter: Adapter, *, actor: str) -> None:
    """The canary takes all traffic; a shadow stays as it is (it is set or cleared on its own)."""
    now = current(session, adapter)
    spec = RouteSpec(
        weights=promoted(now.weights), shadow_version=now.shadow_version, shadow_fraction=now.shadow_fraction
    )
    apply(session, adapter, spec, action="promote", actor=actor)


def rollback(session: Session, adapter: Adapter, *, actor: str) -> RouteSpec:
    """Undo the newest route change; returns the route now in force."""
    changes = list(
        session.scalars(
            select(RouteChange).where(RouteChange.adapter_id == adapter.id).order_by(RouteChange.id.desc()).limit(2)
        )
    )
    if len(changes) < 2:
        raise Conflict(f"adapter {adapter.name!r} has no earlier route to roll back to.", code="nothing_to_roll_back")
    newest, previous = changes
    spec = RouteSpec(
        weights={int(v): int(w) for v, w in previous.weights.items()},
        shadow_version=previous.shadow_version,
        shadow_fraction=previous.shadow_fraction,
    )
    session.delete(newest)
    session.flush()
    _versions(session, adapter, set(spec.weights))  # a version retired since cannot come back
    apply(session, adapter, spec, action="rollback", actor=actor)
    session.delete(previous)  # the re-applied copy is now the newest; keep one entry per state
    session.flush()
    return spec


def retire(session: Session, adapter: Adapter, *, version: int, actor: str) -> None:
    """Stop routing to ``version`` at once (running jobs finish); refuse if nothing else would serve."""
    row = _versions(session, adapter, {version})[version]
    now = current(session, adapter)
    if now.weights.get(version, 0) > 0:
        raise Conflict(
            f"version {version} of {adapter.name!r} still takes {now.weights[version]} % of traffic; "
            "route it elsewhere first (`loraq routes set`).",
            code="version_in_use",
        )
    if now.shadow_version == version:
        apply(session, adapter, RouteSpec(weights=now.weights), action="retire", actor=actor)
    row.status = "retired"
    row.retired_at = utcnow()
    session.flush()


def _versions(session: Session, adapter: Adapter, numbers: set[int]) -> dict[int, AdapterVersion]:
    rows = {
        v.version: v
        for v in session.scalars(
            select(AdapterVersion).where(AdapterVersion.adapter_id == adapter.id, AdapterVersion.version.in_(numbers))
        )
    }
    for number in sorted(numbers):
        if number not in rows:
            raise NotFound(f"adapter {adapter.name!r} has no version {number}.", code="version_not_found")
        if rows[number].status == "retired":
            raise Conflict(f"version {number} of {adapter.name!r} is retired.", code="version_retired")
    return rows
