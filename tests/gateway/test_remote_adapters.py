"""Adapters registered from a remote store through fsspec (``memory://`` stands in for ``s3://``)."""

from __future__ import annotations

from pathlib import Path

import fsspec

from registry.artifacts.checks import file_sha256
from tests.gateway.test_bad_input import make_gateway
from workers.demo_model import adapter_dir

UPPER = adapter_dir("upper")


def test_a_remote_adapter_under_a_store_root_is_validated_and_recorded_by_its_url(
    tmp_path: Path, redis_url: str
) -> None:
    fs = fsspec.filesystem("memory")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        fs.pipe(f"/store/adapters/upper/{name}", (UPPER / name).read_bytes())
    with make_gateway(tmp_path, redis_url, extra_roots=("memory://store/adapters",)) as client:
        made = client.post("/v1/adapters", json={"name": "remote", "uri": "memory://store/adapters/upper"})
        assert made.status_code == 201, made.text
        version = made.json()["versions"][-1]
        assert (version["uri"], version["sha256"]) == (
            "memory://store/adapters/upper",
            file_sha256(UPPER / "adapter_model.safetensors"),
        )
        for uri, code in [
            ("memory://elsewhere/upper", "adapter_uri_outside_roots"),
            ("memory://store/adapters/../secrets", "adapter_uri_outside_roots"),
            ("memory://store/adapters-evil/upper", "adapter_uri_outside_roots"),
            ("memory://store/adapters/missing", "adapter_not_found"),
        ]:
            resp = client.post("/v1/adapters", json={"name": "bad", "uri": uri})
            assert (resp.status_code, resp.json()["error"]["code"]) == (400, code), (uri, resp.text)
    fs.rm("/store", recursive=True)
