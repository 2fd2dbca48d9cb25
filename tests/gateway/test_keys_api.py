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


def test_a_tenant_over_its_quota_gets_429_with_retry_after_and_a_retry_of_an_accepted_job_does_not(
    tmp_path: Path, redis_url: str
) -> None:
    with make_gateway(tmp_path, redis_url) as client:
        put = client.put("/v1/admin/tenants/acme", json={"max_queued_jobs": 2})
        assert put.json() == {"name": "acme", "max_queued_jobs": 2, "max_tokens_per_day": None}
        key = client.post("/v1/admin/keys", json={"tenant": "acme"}).json()["key"]
        tenant = {"Authorization": f"Bearer {key}"}
        job = {"adapter": "upper", "prompt": "hello", "max_tokens": 8}
        for i in range(2):  # no worker runs here: both stay queued
            assert client.post("/v1/jobs", json={**job, "idempotency_key": f"k{i}"}, headers=tenant).status_code == 202
        over = client.post("/v1/jobs", json=job, headers=tenant)
        assert (over.status_code, over.json()["error"]["code"]) == (429, "quota_exceeded")
        assert over.headers["Retry-After"] == "5"
        retry = client.post("/v1/jobs", json={**job, "idempotency_key": "k0"}, headers=tenant)
        assert retry.status_code == 202  # the same job again, not a new one
        assert client.post("/v1/jobs", json=job).status_code == 202  # the admin tenant has no quota


def test_a_job_whose_prompt_and_max_tokens_do_not_fit_the_days_tokens_gets_429_before_it_runs(
    tmp_path: Path, redis_url: str
) -> None:
    """The gateway reserves the prompt's tokens as its tokenizer counts them (7 for "hello" on the
    demo base) plus max_tokens, at submission: nothing has run yet."""
    with make_gateway(tmp_path, redis_url) as client:
        client.put("/v1/admin/tenants/acme", json={"max_tokens_per_day": 7 + 16 + 7 + 15})
        tenant = {"Authorization": f"Bearer {client.post('/v1/admin/keys', json={'tenant': 'acme'}).json()['key']}"}
        job = {"adapter": "upper", "prompt": "hello", "max_tokens": 16}
        assert client.post("/v1/jobs", json=job, headers=tenant).status_code == 202
        over = client.post("/v1/jobs", json=job, headers=tenant)
        assert (over.status_code, over.json()["error"]["code"]) == (429, "quota_exceeded")
        assert 0 < int(over.headers["Retry-After"]) <= 24 * 3600  # midnight UTC
        fits = client.post("/v1/jobs", json={**job, "max_tokens": 15}, headers=tenant)
        assert fits.status_code == 202, fits.text
