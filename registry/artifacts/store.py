"""An adapter's files on local disk: read in place, or fetched from their store once.

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
from dataclasses import dataclass
from pathlib import Path

from registry.artifacts.checks import CONFIG_FILE, WEIGHTS_FILE
from registry.artifacts.uri import is_remote, local_path

ARTIFACT_FILES = (CONFIG_FILE, WEIGHTS_FILE)


class FetchFailed(Exception):
    """The store did not give the adapter's files; the message says which and why."""


@dataclass(frozen=True)
class LocalArtifact:
    path: Path  # a directory holding adapter_config.json and adapter_model.safetensors
    fetched_s: float | None  # seconds spent copying from the store; None when no copy was made


def remote_size(uri: str, name: str = WEIGHTS_FILE) -> int:
    """Bytes of one of a remote adapter's files (checked against the size limit before copying)."""
    import fsspec  # type: ignore[import-untyped]  # only for remote stores

    fs, root = fsspec.core.url_to_fs(uri)
    size: int = fs.size(f"{root.rstrip('/')}/{name}")
    return size


def copy_files(uri: str, dest: Path) -> None:
    """Copy a remote adapter's two files into ``dest``; fsspec's own errors pass through."""
    import fsspec  # only for remote stores

    fs, root = fsspec.core.url_to_fs(uri)
    for name in ARTIFACT_FILES:
        fs.get(f"{root.rstrip('/')}/{name}", str(dest / name))


def local_dir(uri: str, *, sha256: str, cache_dir: Path) -> LocalArtifact:
    """A local directory holding the adapter's config and weights (fetched into the cache if remote)."""
    if not is_remote(uri):
        return LocalArtifact(local_path(uri), None)
    target = cache_dir / sha256
    if all((target / name).is_file() for name in ARTIFACT_FILES):
        return LocalArtifact(target, None)
    started = time.perf_counter()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=cache_dir))
    except OSError as exc:
        raise FetchFailed(f"cannot use the adapter cache {cache_dir}: {exc}") from exc
    try:
        copy_files(uri, tmp)
        _move_into_place(tmp, target)
    except FileNotFoundError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchFailed(f"adapter {uri} is missing {exc.filename or 'a file'} in its store") from exc
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchFailed(f"cannot fetch adapter {uri}: {type(exc).__name__}: {exc}") from exc
    return LocalArtifact(target, time.perf_counter() - started)


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename a complete copy into the cache; a copy another load put there first wins."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not all((target / name).is_file() for name in ARTIFACT_FILES):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
