"""The disk tier: an adapter's files on local disk, fetched from its store once.

A local path or ``file://`` URI is read in place. Any other fsspec URI
(``s3://bucket/prefix``, ``gs://``, ``memory://`` in tests) is copied into
``cache_dir/<sha256>/`` on first use and read from there afterwards; the
directory name is the registered sha256 of the weights, so a changed object
in the store never poisons the cache (the engine re-checks the hash on the
bytes it parses). Copies land in a temporary directory first and are
renamed into place, so a crash never leaves a half-copied adapter.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from registry.adapter_check import CONFIG_FILE, WEIGHTS_FILE
from workers import metrics
from workers.errors import AdapterLoadFailed


def is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


def local_dir(uri: str, *, sha256: str, cache_dir: Path) -> Path:
    """A local directory holding the adapter's config and weights."""
    if is_local(uri):
        parsed = urlparse(uri)
        return Path(parsed.path if parsed.scheme == "file" else uri)
    target = cache_dir / sha256
    if (target / WEIGHTS_FILE).is_file() and (target / CONFIG_FILE).is_file():
        return target
    import fsspec  # only for remote stores

    started = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=cache_dir))
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            fs.get(f"{root.rstrip('/')}/{name}", str(tmp / name))
        if target.exists():  # another load finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except FileNotFoundError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AdapterLoadFailed(f"adapter {uri} is missing {exc.filename or 'a file'} in its store") from exc
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AdapterLoadFailed(f"cannot fetch adapter {uri}: {type(exc).__name__}: {exc}") from exc
    metrics.ADAPTER_LOADS.labels("disk").inc()
    metrics.ADAPTER_LOAD_SECONDS.labels("disk").observe(time.perf_counter() - started)
    return target
