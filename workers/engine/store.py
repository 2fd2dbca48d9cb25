"""The engine's disk tier: :func:`registry.artifacts.store.local_dir`, counted and with the engine's error.

The artifact module is shared with the gateway (torch-free, no metrics);
here a fetch from a remote store is counted as a disk-tier load, and any
failure to find or fetch the files fails the job as ``adapter_load_failed``.
"""

from __future__ import annotations

from pathlib import Path

from registry.artifacts import store
from registry.errors import InvalidAdapter
from workers import metrics
from workers.errors import AdapterLoadFailed


def local_dir(uri: str, *, sha256: str, cache_dir: Path) -> Path:
    try:
        found = store.local_dir(uri, sha256=sha256, cache_dir=cache_dir)
    except (store.FetchFailed, InvalidAdapter) as exc:
        raise AdapterLoadFailed(str(exc)) from exc
    if found.fetched_s is not None:
        metrics.ADAPTER_LOADS.labels("disk").inc()
        metrics.ADAPTER_LOAD_SECONDS.labels("disk").observe(found.fetched_s)
    return found.path
