"""Adapter URIs: a local directory, a ``file://`` URI, or a remote fsspec URL (``s3://...``).

The registry stores what :func:`uri_of` writes (``file://`` URIs are
percent-encoded: a space is ``%20``, a non-ASCII letter its UTF-8 bytes), and
everyone reads it back through :func:`local_path`, which decodes them. Two
readers that parsed URIs each their own way once let the gateway accept an
adapter the worker could not find.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from registry.errors import InvalidAdapter

LOCAL_SCHEMES = ("", "file")


def is_remote(uri: str) -> bool:
    """Whether the adapter lives in an object store (fetched to a local cache before use)."""
    return urlparse(uri).scheme not in LOCAL_SCHEMES


def uri_of(path: Path) -> str:
    """The URI the registry records for a local directory (absolute, percent-encoded ``file://``)."""
    return path.resolve().as_uri()


def local_path(uri: str) -> Path:
    """A local directory from a plain path or a ``file://`` URI; other schemes are refused here."""
    parsed = urlparse(uri)
    if parsed.scheme in LOCAL_SCHEMES:
        path = Path(unquote(parsed.path) if parsed.scheme else uri)
        if "\x00" in str(path):  # no file system takes it; os calls raise ValueError (found by the fuzzer)
            raise InvalidAdapter(f"{uri!r} contains a NUL character; give a real path.", code="adapter_uri_unsupported")
        try:
            return path.expanduser()
        except RuntimeError:  # "~someone" with no such user (found by the schema fuzzer)
            raise InvalidAdapter(
                f"{uri!r} names the home of a user this server does not have; give an absolute path.",
                code="adapter_uri_unsupported",
            ) from None
    raise InvalidAdapter(
        f"URI scheme {parsed.scheme!r} is not supported; give a local directory or a file:// URI.",
        code="adapter_uri_unsupported",
    )


def under_remote_roots(uri: str, roots: Sequence[str]) -> bool:
    """Whether a remote URI lies under one of the remote ``roots`` (no ``..`` step anywhere)."""
    prefixes = [r.rstrip("/") + "/" for r in roots if is_remote(r)]
    inside = any((uri.rstrip("/") + "/").startswith(p) for p in prefixes)
    return inside and ".." not in uri.split("/")
