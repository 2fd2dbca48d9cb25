"""Which adapters' LoRA weights the mixed layers hold gathered for the grouped products: a policy, pure.

The layers run each adapter group against a gathered copy of the batch's
adapters' weights (:class:`~workers.engine.layers.MixedLoRA`); gathering it
reads and writes every one of those adapters' weights in every layer, about
two decode steps' worth of LoRA reads. Gathered naively, exactly the
adapters of each forward, continuous batching re-gathers all the time: a
join prefills a few rows whose adapters are a subset of the batch's, then
the next decode needs the whole set again (two gathers per join), and each
time the last row of an adapter leaves, the set shrinks by one.

The pool is the set the layers hold. A forward's groups are the pool's
adapters; those with no row in the forward are padding groups that still
cost reading their weights and computing their padded rows (where padding
them would more than double the rows a forward computes, the layers compute
only the live groups, gathering just those for that forward:
:class:`~workers.engine.layers.Groups`):

- the pool must hold every adapter of the forward, and the scheduler passes
  the step's whole set (running and joining rows) for a join's prefill too,
  so the prefill and the decode after it share one gather;
- a pool holding adapters the forward does not use keeps them while the
  reads they cost, counted since a forward last used the whole pool, stay
  within what gathering the whole pool again would cost if they came back
  (twice its count: a read and a write each), then drops them (the
  ski-rental rule: pay rent until it adds up to the price of buying). A
  forward using a few of the pool's adapters now and then keeps it; a
  batch that has lost an adapter for good stops paying for it after a
  bounded number of forwards.

Torch-free plain data, so it is unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Pool:
    adapters: tuple[int, ...] = ()  # the slots whose weights are gathered, ascending
    idle: int = 0  # adapter reads paid for unused adapters since a forward last used the whole pool


def choose(pool: Pool, needed: Collection[int]) -> Pool:
    """The pool for a forward whose rows use the adapter slots ``needed`` (0, the base model, ignored).

    The same ``adapters`` as ``pool``'s: the layers keep their gathered weights; other adapters: they
    gather again."""
    want = frozenset(needed) - {0}
    if not want:
        return pool  # a base-only forward reads no LoRA weights: nothing to pay, nothing to drop
    held = frozenset(pool.adapters)
    if want <= held:
        idle = pool.idle + len(held - want) if want != held else 0
        if idle <= 2 * len(held):
            return Pool(adapters=pool.adapters, idle=idle)
    return Pool(adapters=tuple(sorted(want)))
