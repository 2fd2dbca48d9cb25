"""Ids that carry their creation time, so a read of a purged row is told from a read of an id that
never existed without keeping the purged ids (``registry.purge_marks``).

New ids are UUIDs whose first 48 bits are a Unix time in milliseconds (RFC 9562):

- jobs, files and batches: version 7 (time, then 74 random bits), as ``<uuid>``, ``file-<hex>``
  and ``batch_<hex>``;
- a bulk line's job: version 8, the batch id's time, then 74 bits of a hash of the batch id and the
  line number, so a line ingested twice still collides instead of running twice.

Ids made before this scheme (UUID 4 and 5 jobs, 24-hex-digit files and batches) carry no time:
:func:`created_ms` says None, and a line of a batch with such an id keeps its old UUID 5 job id.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid

_TIME_VERSIONS = (7, 8)
_PREFIXES = ("file-", "batch_")
_MS_BITS = 48
_RANDOM_BITS = 74  # 12 after the version nibble, 62 after the variant bits


def _assemble(ms: int, *, version: int, bits: int) -> uuid.UUID:
    """time (48) | version (4) | bits' high 12 | variant 0b10 (2) | bits' low 62."""
    high, low = (bits >> 62) & 0xFFF, bits & ((1 << 62) - 1)
    value = (ms & ((1 << _MS_BITS) - 1)) << 80 | version << 76 | high << 64 | 0b10 << 62 | low
    return uuid.UUID(int=value)


def uuid7(ms: int | None = None) -> uuid.UUID:
    """A version 7 UUID of now (or of ``ms``, Unix milliseconds)."""
    now = time.time_ns() // 1_000_000 if ms is None else ms
    return _assemble(now, version=7, bits=int.from_bytes(os.urandom(10), "big") >> 6)


def derived(parent_id: str, name: str) -> uuid.UUID:
    """The same UUID for the same ``(parent_id, name)``, carrying the parent's creation time
    (version 8); a parent without a time gets the UUID 5 ids it always had."""
    ms = created_ms(parent_id)
    key = f"loraq:{parent_id}:{name}"
    if ms is None:
        return uuid.uuid5(uuid.NAMESPACE_URL, key)
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:10], "big") >> 6
    return _assemble(ms, version=8, bits=digest)


def created_ms(object_id: str) -> int | None:
    """When the object of ``object_id`` was created (Unix ms), or None for an id without a time."""
    body = object_id
    for prefix in _PREFIXES:
        if body.startswith(prefix):
            body = body[len(prefix) :]
            break
    try:
        parsed = uuid.UUID(body)
    except ValueError:
        return None
    if parsed.variant != uuid.RFC_4122 or parsed.version not in _TIME_VERSIONS:
        return None
    return parsed.int >> 80
