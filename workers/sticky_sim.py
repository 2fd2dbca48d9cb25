"""A discrete-event simulation of one worker pulling from per-adapter queues.

Used by ``bench/sticky.py`` (sticky vs FIFO on Zipf arrivals) and by the
policy's tests. Pure Python, deterministic for a given input; time is
simulated, one engine step at a time.

The engine is modelled as ``workers.engine.scheduler`` runs it:

- **Continuous batching.** Up to ``batch_rows`` rows run; a job is a row that
  runs ``Arrival.steps`` decode steps (its output tokens). Between steps,
  finished rows leave and held rows join, in groups of at least a quarter of
  the batch (unless fewer wait). A step costs ``step_s`` whatever its rows.
- **Mixed batches.** The running rows may use up to ``slots`` different
  adapters; an adapter not in a slot is copied in before its row joins
  (``swap_s``, stalling that step: a swap), into a free slot or else the least
  recently used one that no running row uses, preferring one no held row
  wants. A row whose adapter finds no slot waits; rows behind it may join.
- **Admission order.** Held rows that waited ``swap_wait_s`` in the engine
  first, then rows whose adapter is in a slot, then rows that need a swap.
- **The worker** holds at most ``held_rows`` messages (running and waiting in
  the engine; Celery's concurrency is three batches, ``workers/app.py``) and
  pulls more whenever one finishes. ``fifo`` pulls the oldest message of any
  queue; ``sticky`` pulls from the queues :func:`workers.sticky.choose_queues`
  chose, round-robin, oldest first (as a Redis consumer of several queues
  does). Adapters are in host memory already (their background load is
  not modelled). A job's wait ends when its row joins the running batch.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from workers.contract.broker import QueueState
from workers.sticky import StickyConfig, choose_queues

Policy = Literal["fifo", "sticky"]


@dataclass(frozen=True)
class Arrival:
    at_s: float
    adapter: str
    steps: int = 1  # decode steps the job's row runs


@dataclass(frozen=True)
class WorkerModel:
    slots: int = 8  # adapters in device slots at once (max_loras)
    batch_rows: int = 16  # rows in the running batch (max_batch_rows)
    step_s: float = 0.01  # one decode step of the running batch
    swap_s: float = 0.003  # one adapter copied into a slot
    max_wait_s: float = 5.0  # the sticky policy's bound
    held_rows: int = 48  # messages the worker holds: three batches
    swap_wait_s: float = 0.5  # the engine's SWAP_WAIT_S

    def sticky_config(self) -> StickyConfig:
        return StickyConfig(slots=self.slots, max_wait_s=self.max_wait_s, batch_rows=self.batch_rows)

    def longest_batch_s(self, steps: int) -> float:
        """A running batch of rows of at most ``steps`` steps, every slot swapped at its start."""
        return steps * self.step_s + self.slots * self.swap_s


@dataclass
class SimResult:
    swaps: int = 0
    steps: int = 0
    busy_s: float = 0.0  # time the engine ran steps (swaps included)
    end_s: float = 0.0  # when the last job finished
    served: dict[int, float] = field(default_factory=dict)  # arrival index -> when its row joined

    def waits(self, arrivals: Sequence[Arrival]) -> list[float]:
        return [at - arrivals[i].at_s for i, at in self.served.items()]


def zipf_arrivals(
    *, adapters: int, s: float, jobs: int, rate_per_s: float, seed: int, max_steps: int = 1
) -> list[Arrival]:
    """Poisson arrivals at ``rate_per_s``; adapter ``k`` drawn with weight ``1 / k**s``; each job runs
    a uniform 1..``max_steps`` steps."""
    rng = random.Random(seed)
    names = [f"a{k:03d}" for k in range(1, adapters + 1)]
    weights = [1 / k**s for k in range(1, adapters + 1)]
    t = 0.0
    out = []
    for name in rng.choices(names, weights=weights, k=jobs):
        t += rng.expovariate(rate_per_s)
        out.append(Arrival(t, name, rng.randint(1, max_steps)))
    return out


@dataclass
class _Held:
    index: int
    adapter: str
    held_at: float  # when the worker pulled it (the engine's ``arrived``)
    steps_left: int


@dataclass
class _Worker:
    """The simulated worker's state: Redis queues, held rows, device slots."""

    arrivals: Sequence[Arrival]
    model: WorkerModel
    policy: Policy
    result: SimResult = field(default_factory=SimResult)
    queues: dict[str, deque[int]] = field(default_factory=dict)  # adapter -> waiting arrival indices
    pending: list[_Held] = field(default_factory=list)  # held, not yet running, in pull order
    running: list[_Held] = field(default_factory=list)
    slots: OrderedDict[str, None] = field(default_factory=OrderedDict)  # resident adapters, LRU first
    t: float = 0.0
    arrived: int = 0
    consuming: list[str] = field(default_factory=list)  # the sticky policy's last choice
    served_at: dict[str, float] = field(default_factory=dict)  # adapter -> when a message was last pulled

    def receive(self) -> None:
        while self.arrived < len(self.arrivals) and self.arrivals[self.arrived].at_s <= self.t:
            queue = self.queues.setdefault(self.arrivals[self.arrived].adapter, deque())
            queue.append(self.arrived)
            self.arrived += 1

    def pull(self) -> None:
        room = self.model.held_rows - len(self.pending) - len(self.running)
        if room <= 0 or not any(self.queues.values()):
            return
        picks = (
            self._fifo_picks(room) if self.policy == "fifo" else _round_robin(self.queues, self._sticky_order(), room)
        )
        for adapter in picks:
            self.served_at[adapter] = self.t
            index = self.queues[adapter].popleft()
            self.pending.append(_Held(index, adapter, self.t, self.arrivals[index].steps))

    def _fifo_picks(self, room: int) -> list[str]:
        """The queues of the ``room`` oldest messages, whatever their adapter."""
        heads = {a: 0 for a, q in self.queues.items() if q}
        picks: list[str] = []
        while heads and len(picks) < room:
            adapter = min(heads, key=lambda a: self.queues[a][heads[a]])
            picks.append(adapter)
            heads[adapter] += 1
            if heads[adapter] == len(self.queues[adapter]):
                del heads[adapter]
        return picks

    def _sticky_order(self) -> list[str]:
        states = [
            QueueState(
                adapter=a,
                depth=len(q),
                oldest_age_s=self.t - self.arrivals[q[0]].at_s,
                served_ago_s=self.t - self.served_at.get(a, -math.inf),
            )
            for a, q in self.queues.items()
            if q
        ]
        chosen = choose_queues(
            states, resident=self.slots.keys(), config=self.model.sticky_config(), consuming=self.consuming
        )
        self.consuming = chosen
        return chosen

    def admit(self) -> int:
        """Rows that join before the next step; returns the swaps it took."""
        free = self.model.batch_rows - len(self.running)
        group = max(1, self.model.batch_rows // 4)
        if not self.pending or (self.running and free < min(group, len(self.pending))):
            return 0
        candidates = sorted(self.pending, key=self._admission_rank)
        wanted = {h.adapter for h in candidates}
        joined: list[_Held] = []
        swaps = 0
        for held in candidates:
            if len(self.running) + len(joined) >= self.model.batch_rows:
                break
            pinned = {h.adapter for h in (*self.running, *joined)}
            if held.adapter not in self.slots:
                if not self._load(held.adapter, pinned=pinned, wanted=wanted):
                    continue
                swaps += 1
            joined.append(held)
        self.pending = [h for h in self.pending if h not in joined]
        self.running.extend(joined)
        for held in joined:
            self.result.served[held.index] = self.t + swaps * self.model.swap_s
        return swaps

    def _admission_rank(self, held: _Held) -> int:
        if self.t - held.held_at >= self.model.swap_wait_s - 1e-9:
            return 0
        return 1 if held.adapter in self.slots else 2

    def _load(self, adapter: str, *, pinned: set[str], wanted: set[str]) -> bool:
        """Copy ``adapter`` into a free slot or the LRU one no running row uses; False if none."""
        if len(self.slots) >= self.model.slots:
            evictable = [a for a in self.slots if a not in pinned]
            if not evictable:
                return False
            victim = min(evictable, key=lambda a: a in wanted)  # stable: least recently used first
            del self.slots[victim]
        self.slots[adapter] = None
        return True

    def step(self, swaps: int) -> None:
        """One decode step of the running batch, after ``swaps`` adapter copies; finished rows leave."""
        took = self.model.step_s + swaps * self.model.swap_s
        self.t += took
        self.result.busy_s += took
        self.result.swaps += swaps
        self.result.steps += 1
        for adapter in {h.adapter for h in self.running}:
            self.slots.move_to_end(adapter)
        for held in self.running:
            held.steps_left -= 1
        self.running = [h for h in self.running if h.steps_left > 0]

    def idle(self) -> bool:
        """Nothing runs: wait a step while messages wait (the policy chose none of them), else jump
        to the next arrival; False when every job is done."""
        if any(self.queues.values()):
            self.t += self.model.step_s
        elif self.arrived < len(self.arrivals):
            self.t = self.arrivals[self.arrived].at_s
        else:
            return False
        return True


def _round_robin(queues: dict[str, deque[int]], order: list[str], room: int) -> list[str]:
    """Which queue each of up to ``room`` pulled messages comes from, taking the queues in turn."""
    left = {a: len(queues[a]) for a in order}
    picks: list[str] = []
    while len(picks) < room and any(left.values()):
        for adapter in order:
            if left[adapter] and len(picks) < room:
                picks.append(adapter)
                left[adapter] -= 1
    return picks


def simulate(arrivals: Sequence[Arrival], *, policy: Policy, model: WorkerModel) -> SimResult:
    """Serve every arrival (sorted by time) with one worker; the same engine model for both policies."""
    worker = _Worker(arrivals, model, policy)
    while True:
        worker.receive()
        worker.pull()
        swaps = worker.admit()
        if worker.running:
            worker.step(swaps)
        elif not worker.idle():
            break
    worker.result.end_s = worker.t
    return worker.result
