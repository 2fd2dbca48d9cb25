"""Which KV-cache slot each running row holds: the running rows fill slots ``0..n-1``, in running order.

Pure (torch-free, shared by the KV cache and the scheduler's tests). Keeping
the running rows in the first slots lets a decode step attend over one view of
the preallocated cache (``keys[:n, :, :length]``), with no gather; when rows
leave, each hole below the new count is filled by moving one row from above
it, so a row leaving costs at most one row's copy, never the whole cache's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Compaction:
    """What :func:`compact` decided: the kept rows in their new slot order, and the rows that move."""

    order: list[int]  # [kept rows]: the old slot of the row now in each slot 0..len-1
    moves: list[tuple[int, int]]  # (from slot, to slot), each from a slot >= len(order) into a hole below it


def compact(kept: list[int], *, rows: int) -> Compaction:
    """Keep the rows in slots ``kept`` (ascending, each < ``rows``), packed into slots ``0..len(kept)-1``.

    A kept row already below the new count stays where it is; the kept rows
    above it move, lowest first, into the holes, lowest first. So the rows'
    order changes only where a row moved, and the caller adopts ``order``.
    """
    if sorted(set(kept)) != kept or (kept and kept[-1] >= rows):
        raise ValueError(f"kept slots must be ascending, distinct and below {rows}: {kept}")
    count = len(kept)
    staying = set(kept)
    holes = [slot for slot in range(count) if slot not in staying]
    movers = [slot for slot in kept if slot >= count]
    order = list(range(count))
    for src, dst in zip(movers, holes, strict=True):
        order[dst] = src
    return Compaction(order=order, moves=list(zip(movers, holes, strict=True)))
