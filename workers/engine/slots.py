"""Which device slot an adapter goes into: the eviction policy, pure.

Torch-free plain data so it is unit-tested on its own. Slot 0 is the base
model ("no adapter") and is never handed out; the engine calls
:func:`choose_slot` between decode steps with the keys of the rows running
now (``pinned``): a slot a running row uses is never evicted, or that row's
next step would run with another adapter's weights.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    key: str | None  # adapter version key held, None when free
    last_used: float  # when a row last used it (monotonic clock)


def choose_slot(slots: Sequence[Slot], *, pinned: Collection[str], wanted: Collection[str] = ()) -> int | None:
    """Index (1-based, as in the engine's slot table) for a new adapter, or None while every slot is pinned.

    A free slot first; otherwise the least recently used slot that no
    running row uses, preferring one no waiting row wants either (evicting
    an adapter that rows are queued for only means loading it back).
    """
    free = [i for i, s in enumerate(slots) if s.key is None]
    if free:
        return free[0] + 1
    evictable = [i for i, s in enumerate(slots) if s.key not in pinned]
    if not evictable:
        return None
    return min(evictable, key=lambda i: (slots[i].key in wanted, slots[i].last_used, i)) + 1


def host_evictions(sizes: Sequence[tuple[str, int]], *, budget: int, keep: Collection[str]) -> list[str]:
    """Keys to drop from the host cache (``sizes`` in LRU order, oldest first) to fit ``budget`` bytes.

    Adapters in ``keep`` (held in a device slot or being loaded) are not
    dropped, even if that leaves the cache over budget for a while.
    """
    total = sum(n for _, n in sizes)
    drop = []
    for key, n in sizes:
        if total <= budget:
            break
        if key in keep:
            continue
        drop.append(key)
        total -= n
    return drop
