"""A discrete-event simulation of one worker pulling from per-adapter queues.

Used by ``bench/sticky.py`` (sticky vs FIFO on Zipf arrivals) and by the
starvation property test. Time is simulated: a batch costs ``batch_s`` plus
``swap_s`` for every adapter it has to load into a slot; slots are evicted
least-recently-used. Pure Python, deterministic for a given input.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from workers.contract.broker import QueueState
from workers.sticky import StickyConfig, choose_queues


@dataclass(frozen=True)
class Arrival:
    at_s: float
    adapter: str


@dataclass(frozen=True)
class WorkerModel:
    slots: int = 8
    batch_rows: int = 16
    batch_s: float = 0.1  # one batch of generation
    swap_s: float = 0.03  # one adapter into a slot
    max_wait_s: float = 5.0

    def sticky_config(self) -> StickyConfig:
        return StickyConfig(slots=self.slots, max_wait_s=self.max_wait_s, batch_rows=self.batch_rows)


@dataclass
class SimResult:
    swaps: int = 0
    batches: int = 0
    waits: list[float] = field(default_factory=list)  # per job, in arrival order of service
    served: dict[int, float] = field(default_factory=dict)  # arrival index -> start time


def zipf_arrivals(*, adapters: int, s: float, jobs: int, rate_per_s: float, seed: int) -> list[Arrival]:
    """Poisson arrivals at ``rate_per_s``; adapter ``k`` drawn with weight ``1 / k**s``."""
    rng = random.Random(seed)
    names = [f"a{k:03d}" for k in range(1, adapters + 1)]
    weights = [1 / k**s for k in range(1, adapters + 1)]
    t = 0.0
    out = []
    for name in rng.choices(names, weights=weights, k=jobs):
        t += rng.expovariate(rate_per_s)
        out.append(Arrival(t, name))
    return out


def simulate(arrivals: Sequence[Arrival], *, policy: Literal["fifo", "sticky"], model: WorkerModel) -> SimResult:
    """Serve every arrival; ``arrivals`` must be sorted by time."""
    result = SimResult()
    resident: OrderedDict[str, None] = OrderedDict()
    queues: dict[str, deque[int]] = {}
    fifo: deque[int] = deque()
    t, nxt = 0.0, 0
    while len(result.served) < len(arrivals):
        while nxt < len(arrivals) and arrivals[nxt].at_s <= t:
            queues.setdefault(arrivals[nxt].adapter, deque()).append(nxt)
            fifo.append(nxt)
            nxt += 1
        if not fifo:
            t = arrivals[nxt].at_s
            continue
        batch = (
            _fifo_batch(arrivals, fifo, model)
            if policy == "fifo"
            else _sticky_batch(arrivals, queues, resident, t, model)
        )
        taken = set(batch)
        if policy == "fifo":
            for i in batch:
                queues[arrivals[i].adapter].remove(i)
        else:
            fifo = deque(i for i in fifo if i not in taken)
        for i in batch:
            result.served[i] = t
            result.waits.append(t - arrivals[i].at_s)
        loads = _load(resident, {arrivals[i].adapter for i in batch}, model.slots)
        result.swaps += loads
        result.batches += 1
        t += model.batch_s + loads * model.swap_s
    return result


def _fifo_batch(arrivals: Sequence[Arrival], fifo: deque[int], model: WorkerModel) -> list[int]:
    """Oldest jobs first, stopping before a batch needs more adapters than slots."""
    batch: list[int] = []
    adapters: set[str] = set()
    while fifo and len(batch) < model.batch_rows:
        adapter = arrivals[fifo[0]].adapter
        if adapter not in adapters and len(adapters) == model.slots:
            break
        adapters.add(adapter)
        batch.append(fifo.popleft())
    return batch


def _sticky_batch(
    arrivals: Sequence[Arrival],
    queues: dict[str, deque[int]],
    resident: OrderedDict[str, None],
    now: float,
    model: WorkerModel,
) -> list[int]:
    """Consume the chosen queues round-robin, oldest first, as Redis BRPOP over several queues does."""
    states = [
        QueueState(adapter=a, depth=len(q), oldest_age_s=now - arrivals[q[0]].at_s if q else 0.0)
        for a, q in queues.items()
        if q
    ]
    chosen = choose_queues(states, resident=resident.keys(), config=model.sticky_config())
    batch: list[int] = []
    while len(batch) < model.batch_rows and any(queues[a] for a in chosen):
        for adapter in chosen:
            if queues[adapter] and len(batch) < model.batch_rows:
                batch.append(queues[adapter].popleft())
    return batch


def _load(resident: OrderedDict[str, None], needed: set[str], slots: int) -> int:
    """Bring ``needed`` into the slots (LRU eviction of others); returns the number of loads."""
    loads = 0
    for adapter in sorted(needed):
        if adapter in resident:
            resident.move_to_end(adapter)
            continue
        while len(resident) >= slots:
            victim = next(a for a in resident if a not in needed)
            del resident[victim]
        resident[adapter] = None
        loads += 1
    return loads
