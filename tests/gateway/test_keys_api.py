"""Tenant keys: created by the admin, shown once, revoked by prefix, refused at once after."""

from __future__ import annotations

from pathlib import Path

from tests.gateway.test_bad_input import make_gateway


def test_a_revoked_key_is_refused_at_once_and_revoking_twice_is_a_404(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        created = client.post("/v1/admin/keys", json={"tenant": "acme"}).json()
        tenant = {"Authorization": f"Bearer {created['key']}"}
        assert client.get("/v1/adapters", headers=tenant).status_code == 200
        revoked = client.delete(f"/v1/admin/keys/{created['prefix']}")
        assert revoked.json() == {"prefix": created["prefix"], "revoked": 1}
        refused = client.get("/v1/adapters", headers=tenant)
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")
        again = client.delete(f"/v1/admin/keys/{created['prefix']}")
        assert (again.status_code, again.json()["error"]["code"]) == (404, "key_not_found")
        denied = client.delete(f"/v1/admin/keys/{created['prefix']}", headers=tenant)
        assert denied.status_code == 401
