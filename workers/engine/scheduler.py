"""The step loop of the loraq engine: which rows run, join, wait, stop or fail.

Continuous batching: between steps, pending rows join the running batch
(admitted while the batch has places, one KV-cache slot each, and their
adapter is in a device slot) and finished rows leave. A join's prefill runs
in the decode step's own forward where the runner can pack the two
(:meth:`Runner.packed_tokens`), else as a forward of its own before it. A cancelled
job's row stops at the next check; a step that raises is isolated by running
each of its rows again alone, so only a row that fails alone fails. After
each forward, the new text of the rows whose job streams goes to ``deltas``
in one call (rows that do not stream cost nothing), before any of them is
retired: a row's deltas are out before its result is.

Torch-free: the forwards are behind :class:`Runner` and the adapter tiers
behind :class:`Adapters`, so the policy here is tested with fakes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from registry.schemas import GenerationResult, SamplingParams
from workers.contract.streams import Delta, Deltas
from workers.engine.row import Row
from workers.generation import AdapterRef

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CANCEL_CHECK_EVERY = 4  # decode steps between cancellation checks (one Redis MGET)
SWAP_WAIT_S = 0.5  # a row waits at most this long for rows of resident adapters to go first

Cancelled = Callable[[Sequence[str]], set[str]]  # which of these job ids were cancelled


class Runner(Protocol):
    """The forwards over the running batch, whose KV cache the runner keeps in row order."""

    def prefill(self, rows: Sequence[Row]) -> None:
        """Prompts of joining rows in one forward; each row gets its first token; their KV joins the batch's."""

    def decode(self, rows: Sequence[Row]) -> None:
        """One step for every running row (in KV order): each gets one more token."""

    def packed_tokens(self, running: Sequence[Row], joining: Sequence[Row]) -> list[int] | None:
        """Each row's tokens in a packed step of these rows, or None: the join runs as a prefill."""

    def packed(self, running: Sequence[Row], joining: Sequence[Row]) -> None:
        """One forward: a decode step of ``running`` and the prefill of ``joining`` (their KV after)."""

    def keep(self, rows: list[int]) -> list[int]:
        """Drop every KV row not in ``rows`` (indices, ascending); return the kept rows' indices in their
        new KV order (the cache moves rows into the places of those leaving, rather than shifting all)."""

    def reset(self) -> None:
        """Forget the running batch's KV cache (after a failed step)."""

    def finished(self, row: Row) -> bool: ...

    def result(self, row: Row) -> GenerationResult: ...

    def streamable(self, row: Row) -> str:
        """The row's text so far that its result will begin with."""

    def row_generator(self, sampling: SamplingParams) -> torch.Generator | None: ...


class Adapters(Protocol):
    """The adapter tiers as the scheduler sees them: device slots, loads in the background."""

    def slot_of(self, key: str) -> int | None: ...

    def slot_for(
        self, ref: AdapterRef | None, *, pinned: Collection[str], wanted: Collection[str] = ()
    ) -> int | None: ...

    def start_load(self, ref: AdapterRef) -> None: ...

    def collect_loads(self) -> dict[str, BaseException]: ...

    def wait_for_load(self) -> None: ...

    def activate(self, slots: list[int], *, step: Collection[int] = (), tokens: list[int] | None = None) -> None:
        """The next forward runs rows in ``slots``; ``step``: the slots of the step's other rows;
        ``tokens``: each row's tokens in a packed forward."""

    def deactivate(self) -> None: ...

    def touch(self, slots: Collection[int]) -> None: ...


class Scheduler:
    """Owns the pending and running rows; :meth:`run` is the engine thread's loop.

    ``max_rows`` is the batch's places (the KV cache's slots); ``cancelled`` is asked every
    ``CANCEL_CHECK_EVERY`` decode steps; ``deltas`` receives streamed rows' new text after each forward.
    """

    def __init__(
        self,
        *,
        runner: Runner,
        adapters: Adapters,
        max_rows: int,
        cancelled: Cancelled | None = None,
        deltas: Deltas | None = None,
    ) -> None:
        self.runner = runner
        self.adapters = adapters
        self.max_rows = max_rows
        self.cancelled = cancelled
        self.deltas = deltas
        self.step_lock = threading.Lock()  # one forward at a time (the loop, or the engine's score())
        self.pending: deque[Row] = deque()
        self.running: list[Row] = []
        self.pinned: frozenset[str] = frozenset()  # adapters of the running rows
        self._inbox: queue.SimpleQueue[Row | None] = queue.SimpleQueue()
        self._steps = 0

    # -- callers' side ----------------------------------------------------------------

    def generate(self, rows: Sequence[Row]) -> list[GenerationResult]:
        """Submit the rows and wait for all of them; raise the first row error after every row ended."""
        self.submit(rows)
        results: list[GenerationResult] = []
        error: BaseException | None = None
        for row in rows:
            try:
                results.append(row.future.result())
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        return results

    def submit(self, rows: Sequence[Row]) -> None:
        for row in rows:
            self._inbox.put(row)

    def submitted(self) -> int:
        """Rows submitted that the loop has not taken yet."""
        return self._inbox.qsize()

    def close(self) -> None:
        """Ask :meth:`run` to return (after its current step)."""
        self._inbox.put(None)

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        """The step loop, on the engine's thread for its lifetime."""
        while self.receive(block=not self.pending and not self.running):
            self.step()

    def receive(self, *, block: bool) -> bool:
        """Take every row submitted since the last step (waiting for one when idle); False on close."""
        while block or not self._inbox.empty():
            row = self._inbox.get()
            if row is None:
                return False
            self.pending.append(row)
            if row.req.adapter is not None:
                self.adapters.start_load(row.req.adapter)  # prefetch into host memory while it waits
            block = False
        return True

    def step(self) -> None:
        """Admit what fits, prefill the joining rows, one decode step for all, retire the finished."""
        joined: list[Row] = []
        try:
            with self.step_lock:
                self._fail_failed_loads()
                joined = self._admit()
                self.running = self._advance(joined)
        except Exception as exc:  # a forward failed: no row of it can be trusted to be innocent
            # A row that finished at this step's prefill already has its answer: it is not re-run.
            suspects = [*self.running, *(r for r in joined if r not in self.running)]
            self._isolate([r for r in suspects if not r.future.done()], exc)
            self.running = []
            self.runner.reset()
            self.adapters.deactivate()
        self.pinned = frozenset(r.key for r in self.running if r.key)
        if not self.running and self.pending and not joined:
            self.adapters.wait_for_load()  # nothing can run until an adapter arrives

    def _advance(self, joined: list[Row]) -> list[Row]:
        running = self.running
        tokens = self.runner.packed_tokens(running, joined) if joined and running else None
        if tokens is not None:  # the join rides this step's decode forward
            rows = [*running, *joined]
            self.adapters.activate([r.slot for r in rows], tokens=tokens)
            self.runner.packed(running, joined)
            self._after_forward(rows)
            self._count_step(running)
            return self._retire(rows)
        if joined:
            self._forward(self.runner.prefill, joined, running=running)
            running = self._retire(running + joined)
        if running:
            self._forward(self.runner.decode, running)
            self._count_step(running)
            running = self._retire(running)
        return running

    def _count_step(self, running: list[Row]) -> None:
        self._steps += 1
        if self.cancelled is not None and self._steps % CANCEL_CHECK_EVERY == 0:
            self._check_cancelled(running, self.cancelled)

    def _forward(
        self, forward: Callable[[Sequence[Row]], None], rows: list[Row], *, running: Sequence[Row] = ()
    ) -> None:
        """``running``: at a join's prefill, the rows the decode after it runs too (their adapters stay
        gathered in the layers through the prefill)."""
        self.adapters.activate([r.slot for r in rows], step={r.slot for r in running})
        forward(rows)
        self._after_forward(rows)

    def _after_forward(self, rows: list[Row]) -> None:
        self.adapters.touch({r.slot for r in rows if r.slot})  # once per slot in use, not once per row
        if self.deltas is not None:
            self._publish(rows, self.deltas)

    def _publish(self, rows: list[Row], deltas: Deltas) -> None:
        """The streamed rows' text past what each has published, in one call."""
        out = []
        for r in rows:
            if not r.req.stream:
                continue
            text = self.runner.streamable(r)
            if len(text) > r.sent:
                out.append(Delta(job_id=r.req.job_id, pos=r.sent, text=text[r.sent :]))
                r.sent = len(text)
        if out:
            deltas(out)

    def _retire(self, rows: list[Row]) -> list[Row]:
        """Hand finished rows their results and drop them from the KV cache; return the rows still
        running, in the cache's new order."""
        keep = []
        for i, r in enumerate(rows):
            if self.runner.finished(r):
                r.future.set_result(self.runner.result(r))
            else:
                keep.append(i)
        if len(keep) == len(rows):
            return rows
        return [rows[i] for i in self.runner.keep(keep)]

    def _check_cancelled(self, running: list[Row], cancelled: Cancelled) -> None:
        stopped = cancelled([r.req.job_id for r in running])
        for r in running:
            r.cancelled = r.cancelled or r.req.job_id in stopped

    def _isolate(self, rows: list[Row], exc: Exception) -> None:
        """A step failed: a row that ran alone fails; the others go back to pending, each to run alone."""
        if len(rows) == 1 and rows[0].exclusive:
            rows[0].future.set_exception(exc)
            return
        log.warning("a step of %d rows failed (%s); each runs again alone", len(rows), exc)
        for r in reversed(rows):
            r.restart(self.runner.row_generator(r.req.sampling))
            self.pending.appendleft(r)

    def _fail_failed_loads(self) -> None:
        """A failed background load fails the rows waiting for that adapter."""
        for key, exc in self.adapters.collect_loads().items():
            for row in [r for r in self.pending if r.key == key]:
                self.pending.remove(row)
                row.future.set_exception(exc)

    # -- admission --------------------------------------------------------------------

    def _admit(self) -> list[Row]:
        """Pending rows that can join now: a place in the batch, adapter in a slot.

        Rows join in groups of at least a quarter of the batch (unless fewer
        are waiting): each join costs a prefill (a forward of its own, or,
        where the runner packs, its prompts' setup in the step's forward),
        so admitting rows one by one as each other row finishes costs more
        than the few steps a place stays empty (measured with
        ``bench/engine.py``: groups of one, an eighth and a quarter of 16
        places, with and without packing; a quarter ran fastest).
        """
        if any(r.exclusive for r in self.running):
            return []
        if self.pending and self.pending[0].exclusive:
            return self._admit_exclusive()
        group = max(1, self.max_rows // 4)
        if self.running and self.max_rows - len(self.running) < min(group, len(self.pending)):
            return []
        candidates = sorted(self.pending, key=self._admission_order())  # stable: arrival order within each class
        self.pending.clear()
        joined, waiting = self._fill(candidates)
        self.pending.extend(sorted(waiting, key=lambda r: r.arrived))
        return joined

    def _admit_exclusive(self) -> list[Row]:
        """A row that shared a failing step runs alone, once the batch is empty."""
        if self.running or (slot := self.adapters.slot_for(self.pending[0].req.adapter, pinned=set())) is None:
            return []
        row = self.pending.popleft()
        row.slot = slot
        return [row]

    def _admission_order(self) -> Callable[[Row], int]:
        """Overdue rows first, then rows whose adapter is in a slot, then rows needing a swap."""
        clock = time.monotonic()

        def order(r: Row) -> int:
            if clock - r.arrived >= SWAP_WAIT_S:
                return 0
            return 1 if r.key is None or self.adapters.slot_of(r.key) is not None else 2

        return order

    def _fill(self, candidates: list[Row]) -> tuple[list[Row], list[Row]]:
        """Candidates in order while places last; each joins once its adapter has a slot."""
        joined: list[Row] = []
        waiting: list[Row] = []
        wanted = frozenset(r.key for r in candidates if r.key)
        for i, row in enumerate(candidates):
            now = self.running + joined
            if len(now) >= self.max_rows:
                waiting.extend(candidates[i:])
                break
            slot = self.adapters.slot_for(row.req.adapter, pinned={r.key for r in now if r.key}, wanted=wanted)
            if slot is None:  # adapter still loading, or every slot in use by running rows
                waiting.append(row)
                continue
            row.slot = slot
            joined.append(row)
        return joined, waiting
