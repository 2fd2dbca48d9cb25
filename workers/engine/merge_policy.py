"""When to merge one adapter into the base weights: the merged fast path's policy, pure.

A batch whose rows all use one adapter can run at base speed with that
adapter's delta merged into the base weights (:mod:`workers.engine.merge`),
but a merge and its unmerge each cost about a pass over the weights, so a
merge pays only if the batch stays single-adapter for a while. The policy
sees the slots of every forward and answers which slot should be merged for
it:

- merged adapter X, and a row of anything else (another adapter, or the
  base model) in the forward: unmerge now (correctness, not a choice);
- not merged, and the last ``wait`` forwards all ran adapter X alone: merge X.

Hysteresis, so alternating traffic cannot flap: a merge that ended before
``pays_after`` forwards did not pay for itself, and doubles the wait before
the next one (up to ``max_wait``); a merge that paid halves it back towards
``wait``. Under traffic that alternates "one adapter for k forwards, then a
mixed one", the wait grows past k after at most log2(k / wait) + 1 merges,
and no merge happens after that.

Torch-free plain data, so it is unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class MergePolicy:
    wait: int = 8  # forwards of one adapter alone before it is merged
    pays_after: int = 32  # a merge held this many forwards paid for its merge and unmerge
    max_wait: int = 4096  # the longest wait the backoff reaches


@dataclass(frozen=True)
class MergeState:
    merged: int = 0  # the slot merged into the base weights; 0: none
    candidate: int = 0  # the slot the latest forwards ran alone; 0: none
    streak: int = 0  # consecutive forwards of ``candidate`` alone
    held: int = 0  # forwards run with ``merged`` so far
    wait: int = 8  # the wait now (grows after merges that did not pay)


def initial(policy: MergePolicy) -> MergeState:
    return MergeState(wait=policy.wait)


def step(state: MergeState, slots: Collection[int], policy: MergePolicy) -> MergeState:
    """The state for a forward over rows in ``slots`` (0 = a base-model row); ``merged`` is the slot
    to hold merged while it runs."""
    kinds = set(slots)
    alone = next(iter(kinds)) if len(kinds) == 1 else 0  # 0 also when the only kind is the base model
    if state.merged and alone == state.merged:
        return replace(state, held=state.held + 1, streak=state.streak + 1)
    if state.merged:
        paid = state.held >= policy.pays_after
        wait = max(policy.wait, state.wait // 2) if paid else min(policy.max_wait, 2 * state.wait)
        state = MergeState(wait=wait)
    streak = state.streak + 1 if alone and alone == state.candidate else int(bool(alone))
    state = replace(state, candidate=alone, streak=streak)
    if alone and streak >= state.wait:
        return replace(state, merged=alone, held=1)
    return state


def forget(state: MergeState, slot: int) -> MergeState:
    """``slot`` now holds another adapter: it is not merged, and its streak starts over."""
    if slot in (state.merged, state.candidate):
        return MergeState(wait=state.wait)
    return state
