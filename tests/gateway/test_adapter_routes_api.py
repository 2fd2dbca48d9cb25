"""The route and stats endpoints: admin-only changes, JSON errors with codes, a route epoch for workers."""

from __future__ import annotations

from pathlib import Path

import redis

from registry.queues import ROUTES_EPOCH_KEY
from tests.gateway.test_bad_input import DEMO, make_gateway


def test_route_changes_need_admin_are_validated_and_tell_the_workers(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        epoch = redis.Redis.from_url(redis_url)
        before = int(epoch.get(ROUTES_EPOCH_KEY) or 0)  # registering "upper" bumped it already
        assert before >= 1
        assert client.post("/v1/adapters", json={"name": "upper", "uri": str(DEMO / "adapters" / "upper")}).is_success
        route = client.put("/v1/adapters/upper/route", json={"weights": {"1": 70, "2": 30}, "shadow": None})
        assert route.status_code == 200, route.text
        assert route.json()["routes"] == {"1": 70, "2": 30}
        assert int(epoch.get(ROUTES_EPOCH_KEY) or 0) == before + 2

        bad = client.put("/v1/adapters/upper/route", json={"weights": {"1": 70}})
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "route_invalid")
        missing = client.post("/v1/adapters/nope/promote")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "adapter_not_found")

        key = client.post("/v1/admin/keys", json={"tenant": "acme"}).json()["key"]
        denied = client.post("/v1/adapters/upper/promote", headers={"Authorization": f"Bearer {key}"})
        assert (denied.status_code, denied.json()["error"]["code"]) == (403, "admin_required")

        stats = client.get("/v1/adapters/upper/stats", headers={"Authorization": f"Bearer {key}"})
        assert stats.status_code == 200
        assert [(s["version"], s["jobs"]) for s in stats.json()] == [(1, {}), (2, {})]


def test_a_shadowed_job_runs_twice_but_only_the_primary_is_ever_returned(tmp_path: Path, redis_url: str) -> None:
    from sqlalchemy import select

    from registry.models import Job

    with make_gateway(tmp_path, redis_url) as client:
        assert client.post("/v1/adapters", json={"name": "upper", "uri": str(DEMO / "adapters" / "upper")}).is_success
        route = client.put(
            "/v1/adapters/upper/route", json={"weights": {"2": 100}, "shadow": {"version": 1, "fraction": 1.0}}
        )
        assert route.json()["shadow"] == {"version": 1, "fraction": 1.0}
        accepted = client.post("/v1/jobs", json={"adapter": "upper", "prompt": "shadow me", "max_tokens": 8}).json()
        assert accepted["version"] == 2
        with client.app.state.sessions() as s:  # type: ignore[attr-defined]
            rows = {j.id: j for j in s.scalars(select(Job))}
        [shadow] = [j for j in rows.values() if j.shadow_of == accepted["id"]]
        assert (shadow.priority, shadow.request["prompt"]) == (9, "shadow me")
        broker = redis.Redis.from_url(redis_url)
        assert broker.llen("lora.upper") == 1 and sum(broker.llen(k) for k in broker.keys("lora.upper?*")) == 1
        assert client.get(f"/v1/jobs/{shadow.id}").status_code == 404  # never returned, not even to the admin
        assert client.get(f"/v1/jobs/{accepted['id']}").status_code == 200
