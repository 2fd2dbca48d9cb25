"""Canary weights, shadow, promote, rollback and retire, on a real database of each backend."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy.orm import Session

from registry import routes
from registry.adapters import get_visible, resolve
from registry.errors import Conflict, InvalidRequest, NotFound
from registry.models import Adapter
from registry.routes import RouteSpec
from tests.registry.test_adapters_and_jobs import World, register


def test_a_route_must_sum_to_100_with_a_shadow_fraction_in_range() -> None:
    routes.check_spec(RouteSpec(weights={1: 90, 2: 10}, shadow_version=3, shadow_fraction=0.05))
    for bad in (
        RouteSpec(weights={1: 90, 2: 20}),
        RouteSpec(weights={}),
        RouteSpec(weights={1: 101, 2: -1}),
        RouteSpec(weights={1: 100}, shadow_version=2, shadow_fraction=0.0),
        RouteSpec(weights={1: 100}, shadow_fraction=0.5),
    ):
        with pytest.raises(InvalidRequest) as info:
            routes.check_spec(bad)
        assert info.value.code == "route_invalid"


def test_promote_gives_the_newest_version_with_traffic_everything() -> None:
    assert routes.promoted({1: 90, 3: 10, 2: 0}) == {3: 100}


def adapter(db: Session, world: World) -> Adapter:
    register(db, world, "upper")
    register(db, world, "upper")  # version 2 now takes 100 %
    return get_visible(db, tenant=world.admin, name="upper")


def shares(db: Session, world: World, keys: int = 10_000) -> Counter[int]:
    return Counter(resolve(db, tenant=world.admin, name="upper", routing_key=f"user-{i}").version for i in range(keys))


def test_a_canary_split_holds_within_3_percent_and_each_key_keeps_its_version(db: Session, world: World) -> None:
    upper = adapter(db, world)
    routes.set_route(db, upper, RouteSpec(weights={1: 90, 2: 10}), actor="ops")
    split = shares(db, world)
    assert abs(split[1] / 10_000 - 0.90) <= 0.03 and abs(split[2] / 10_000 - 0.10) <= 0.03, split
    first = {
        f"user-{i}": resolve(db, tenant=world.admin, name="upper", routing_key=f"user-{i}").version for i in range(50)
    }
    again = {k: resolve(db, tenant=world.admin, name="upper", routing_key=k).version for k in first}
    assert first == again


def test_promote_then_rollback_walks_the_route_history_back(db: Session, world: World) -> None:
    upper = adapter(db, world)
    routes.set_route(db, upper, RouteSpec(weights={1: 90, 2: 10}, shadow_version=1, shadow_fraction=0.05), actor="ops")
    routes.promote(db, upper, actor="ops")
    assert routes.current(db, upper) == RouteSpec(weights={2: 100}, shadow_version=1, shadow_fraction=0.05)
    assert routes.rollback(db, upper, actor="ops") == RouteSpec(
        weights={1: 90, 2: 10}, shadow_version=1, shadow_fraction=0.05
    )
    assert routes.current(db, upper).weights == {1: 90, 2: 10}
    assert set(shares(db, world, keys=300)) == {1, 2}  # the next jobs already follow the rolled-back route
    assert routes.rollback(db, upper, actor="ops").weights == {2: 100}  # registering v2
    assert routes.rollback(db, upper, actor="ops").weights == {1: 100}  # registering v1
    with pytest.raises(Conflict) as info:
        routes.rollback(db, upper, actor="ops")
    assert info.value.code == "nothing_to_roll_back"


def test_a_retired_version_stops_being_routed_and_cannot_come_back(db: Session, world: World) -> None:
    upper = adapter(db, world)
    routes.set_route(db, upper, RouteSpec(weights={1: 50, 2: 50}), actor="ops")
    with pytest.raises(Conflict) as busy:
        routes.retire(db, upper, version=1, actor="ops")
    assert busy.value.code == "version_in_use"
    routes.set_route(db, upper, RouteSpec(weights={2: 100}, shadow_version=1, shadow_fraction=0.1), actor="ops")
    routes.retire(db, upper, version=1, actor="ops")
    assert routes.current(db, upper) == RouteSpec(weights={2: 100})  # its shadow is gone too
    with pytest.raises(Conflict) as retired:
        routes.set_route(db, upper, RouteSpec(weights={1: 100}), actor="ops")
    assert retired.value.code == "version_retired"
    with pytest.raises(NotFound) as missing:
        routes.set_route(db, upper, RouteSpec(weights={7: 100}), actor="ops")
    assert missing.value.code == "version_not_found"


def test_a_staged_version_takes_no_traffic_until_a_route_names_it(db: Session, world: World) -> None:
    from registry.adapters import register_version
    from tests.registry.test_adapters_and_jobs import fake_info

    upper = adapter(db, world)  # v1, v2 (active, 100 %)
    staged = register_version(
        db,
        name="upper",
        uri="/srv/u3",
        info=fake_info("upper", 3),
        base=world.base,
        owner=world.admin,
        public=True,
        staged=True,
    )
    assert (staged.version, staged.status, staged.activated_at) == (3, "staged", None)
    assert routes.current(db, upper).weights == {2: 100}
    assert set(shares(db, world, keys=300)) == {2}
    routes.set_route(db, upper, RouteSpec(weights={2: 80, 3: 20}), actor="ops")
    assert staged.status == "active" and staged.activated_at is not None
    assert set(shares(db, world, keys=300)) == {2, 3}
