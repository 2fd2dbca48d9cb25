"""Which adapter version a job gets: a pure function of the route and a key.

Deterministic by routing key, so one user keeps one version while a canary
runs; the job id stands in when the caller gives no key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

BUCKETS = 10_000


def bucket(key: str) -> int:
    """A stable bucket in ``[0, BUCKETS)``; sha256 so it is the same on every host and Python."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def choose_version(weights: Sequence[tuple[int, int]], key: str) -> int:
    """Pick a version id from ``(version_id, weight_percent)`` legs summing to 100.

    Legs are taken in version-id order, so adding a leg moves as few keys as
    possible and two processes with the same route always agree.
    """
    legs = sorted((v, w) for v, w in weights if w > 0)
    if not legs:
        raise ValueError("route has no version with a positive weight")
    total = sum(w for _, w in legs)
    point = bucket(key) * total / BUCKETS
    upto = 0
    for version_id, weight in legs:
        upto += weight
        if point < upto:
            return version_id
    return legs[-1][0]


def in_shadow(job_id: str, fraction: float) -> bool:
    """Whether this job is also run on the shadow version: a stable ``fraction`` of job ids."""
    return fraction > 0 and bucket(f"shadow:{job_id}") < fraction * BUCKETS
