"""The route and stats endpoints: admin-only changes, JSON errors with codes."""

from __future__ import annotations

from pathlib import Path

import redis

from tests.gateway.test_bad_input import make_gateway
from workers.demo_model import adapter_dir


def test_route_changes_need_admin_and_are_validated(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        assert client.post("/v1/adapters", json={"name": "upper", "uri": str(adapter_dir("upper"))}).is_success
        route = client.put("/v1/adapters/upper/route", json={"weights": {"1": 70, "2": 30}, "shadow": None})
        assert route.status_code == 200, route.text
        assert route.json()["routes"] == {"1": 70, "2": 30}

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
        assert client.post("/v1/adapters", json={"name": "upper", "uri": str(adapter_dir("upper"))}).is_success
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


def test_the_base_model_is_a_reserved_adapter_created_on_first_use(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        upper = str(adapter_dir("upper"))
        refused = client.post("/v1/adapters", json={"name": "base", "uri": upper})
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "adapter_name_reserved")
        assert "base" not in [a["name"] for a in client.get("/v1/adapters").json()]
        job = client.post("/v1/jobs", json={"adapter": "base", "prompt": "hi", "max_tokens": 4})
        assert job.status_code == 202, job.text
        listed = {a["name"]: a for a in client.get("/v1/adapters").json()}
        assert listed["base"]["queue"] == "lora.base" and listed["base"]["versions"][0]["r"] == 0
        assert client.post("/v1/jobs", json={"adapter": "base", "prompt": "again", "max_tokens": 4}).status_code == 202
