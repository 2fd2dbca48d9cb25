"""Adapters registered from a remote store (``s3://``, ``gs://``, any fsspec URL).

The gateway copies the adapter's two files into a temporary directory
(with :mod:`registry.artifacts.store`, as workers fetch them), validates that
copy like a local adapter (the sha256 recorded is of the bytes it checked;
workers verify the same hash when they fetch), and records the remote URI.
Only URLs under a remote entry of ``LORAQ_ADAPTER_ROOTS`` are fetched at all.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from registry.artifacts.checks import CONFIG_FILE, WEIGHTS_FILE, AdapterInfo, validate_adapter
from registry.artifacts.store import copy_files, remote_size
from registry.artifacts.uri import under_remote_roots
from registry.errors import InvalidAdapter


def validate_remote(uri: str, *, roots: Sequence[str], base_dir: Path, max_bytes: int) -> AdapterInfo:
    if not under_remote_roots(uri, roots):
        raise InvalidAdapter(
            f"{uri} is outside the adapter roots; add its store prefix (e.g. s3://bucket/adapters) "
            "to LORAQ_ADAPTER_ROOTS.",
            code="adapter_uri_outside_roots",
        )
    with tempfile.TemporaryDirectory(prefix="loraq-register-") as tmp:
        try:
            size = remote_size(uri)
            if size > max_bytes:
                raise InvalidAdapter(
                    f"adapter weights are {size} bytes, above the limit of {max_bytes} (LORAQ_MAX_ADAPTER_BYTES).",
                    code="adapter_too_large",
                )
            copy_files(uri, Path(tmp))
        except FileNotFoundError as exc:
            raise InvalidAdapter(f"{uri} has no {CONFIG_FILE} and {WEIGHTS_FILE}.", code="adapter_not_found") from exc
        except InvalidAdapter:
            raise
        except Exception as exc:
            raise InvalidAdapter(
                f"cannot read {uri}: {type(exc).__name__}: {exc}", code="adapter_uri_unsupported"
            ) from exc
        info = validate_adapter(tmp, base_dir=base_dir, max_bytes=max_bytes)
    return info
