"""The tenant matrix: another tenant's jobs and private adapters are a 404 through every endpoint,
and admin endpoints are a 403 for tenants."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.test_bad_input import make_gateway
from workers.demo_model import adapter_dir

UPPER = str(adapter_dir("upper"))


def test_tenants_see_and_touch_only_their_own_jobs_and_private_adapters(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        assert client.post(
            "/v1/adapters", json={"name": "secret", "uri": UPPER, "public": False, "owner": "acme"}
        ).is_success
        acme = {"Authorization": f"Bearer {client.post('/v1/admin/keys', json={'tenant': 'acme'}).json()['key']}"}
        globex = {"Authorization": f"Bearer {client.post('/v1/admin/keys', json={'tenant': 'globex'}).json()['key']}"}
        job = client.post("/v1/jobs", json={"adapter": "secret", "prompt": "mine", "max_tokens": 8}, headers=acme)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]

        def code(resp: object) -> tuple[int, str]:
            return resp.status_code, resp.json()["error"]["code"]  # type: ignore[attr-defined]

        assert client.get(f"/v1/jobs/{job_id}", headers=acme).status_code == 200
        assert code(client.get(f"/v1/jobs/{job_id}", headers=globex)) == (404, "job_not_found")
        assert code(client.delete(f"/v1/jobs/{job_id}", headers=globex)) == (404, "job_not_found")
        use = client.post("/v1/jobs", json={"adapter": "secret", "prompt": "theirs", "max_tokens": 8}, headers=globex)
        assert code(use) == (404, "adapter_not_found")
        assert code(client.get("/v1/adapters/secret/stats", headers=globex)) == (404, "adapter_not_found")
        assert "secret" in [a["name"] for a in client.get("/v1/adapters", headers=acme).json()]
        assert "secret" not in [a["name"] for a in client.get("/v1/adapters", headers=globex).json()]
        assert client.get(f"/v1/jobs/{job_id}", headers=acme).json()["status"] == "queued"  # untouched by globex


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/adapters", {"name": "mine", "uri": UPPER}),
        ("PUT", "/v1/adapters/upper/route", {"weights": {"1": 100}}),
        ("POST", "/v1/adapters/upper/promote", None),
        ("POST", "/v1/adapters/upper/rollback", None),
        ("POST", "/v1/adapters/upper/versions/1/retire", None),
        ("POST", "/v1/admin/keys", {"tenant": "acme"}),
        ("DELETE", "/v1/admin/keys/lq-0000000", None),
        ("PUT", "/v1/admin/tenants/acme", {"max_queued_jobs": 1}),
        ("GET", "/v1/admin/status", None),
    ],
)
def test_admin_endpoints_refuse_tenant_keys(
    tmp_path: Path, redis_url: str, method: str, path: str, body: dict[str, object] | None
) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        key = client.post("/v1/admin/keys", json={"tenant": "acme"}).json()["key"]
        resp = client.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})
        assert (resp.status_code, resp.json()["error"]["code"]) == (403, "admin_required"), resp.text


def test_a_quota_too_large_for_its_column_is_refused_with_a_422(tmp_path: Path, redis_url: str) -> None:
    """Found by the schema fuzzer: 2**63 tokens a day was a 500 (SQLite's INTEGER overflowed)."""
    with make_gateway(tmp_path, redis_url) as client:
        for body in ({"max_tokens_per_day": 2**63}, {"max_queued_jobs": 2**31}):
            resp = client.put("/v1/admin/tenants/acme", json=body)
            assert (resp.status_code, resp.json()["error"]["code"]) == (422, "invalid_request"), body
        ok = client.put("/v1/admin/tenants/acme", json={"max_tokens_per_day": 2**63 - 1, "max_queued_jobs": 2**31 - 1})
        assert ok.status_code == 200, ok.text
