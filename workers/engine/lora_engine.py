"""The loraq engine: one resident base model, adapter slots, continuous batching.

A thin facade over its parts, each in its own module:

- :mod:`~workers.engine.runner`: the base model and tokenizer, prefill and
  decode forwards through the mixed-LoRA layers (:mod:`~workers.engine.layers`:
  rows of different adapters in one forward), the running batch's KV cache;
- :mod:`~workers.engine.adapters`: device slots, the host LRU cache and the
  disk tier, loads in the background;
- :mod:`~workers.engine.scheduler`: which rows join, wait, stop or fail,
  step by step (continuous batching);
- :mod:`~workers.engine.budget`: the memory plan; it sizes the KV cache's row
  slots (allocated once), and the engine refuses to start unless one full-length row fits.

PEFT is the oracle: for every supported adapter, a row's logits equal PEFT's
for that adapter alone (tests/workers/engine/test_lora_engine.py).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from registry.schemas import ChatMessage, GenerationResult
from workers import chat
from workers.contract.streams import Deltas
from workers.engine.adapters import AdapterManager
from workers.engine.budget import plan_memory, publish
from workers.engine.config import EngineConfig
from workers.engine.memory import MemoryBudget
from workers.engine.runner import Runner
from workers.engine.scheduler import Cancelled, Scheduler
from workers.generation import GenRequest


@dataclass(frozen=True)
class _Parts:
    runner: Runner
    budget: MemoryBudget
    adapters: AdapterManager
    scheduler: Scheduler


def _build(config: EngineConfig, cancelled: Cancelled | None, deltas: Deltas | None) -> _Parts:
    runner = Runner(config)
    budget = plan_memory(
        runner,
        budget_mb=config.memory_budget_mb,
        max_rows=config.max_rows,
        merge_copy=config.merge_adapters,
        max_row_tokens=config.max_row_tokens,
    )
    runner.allocate_kv(slots=budget.kv_rows, row_tokens=budget.row_tokens)
    publish(budget, runner.device)
    adapters = AdapterManager(
        config,
        layers=runner.layers,
        batch=runner.batch,
        module_names=runner.module_names,
        dora=runner.quantized is None,
    )
    scheduler = Scheduler(
        runner=runner,
        adapters=adapters,
        max_rows=budget.kv_rows,  # at most config.max_rows; fewer where the budget holds fewer KV slots
        cancelled=cancelled,
        deltas=deltas,
    )
    return _Parts(runner=runner, budget=budget, adapters=adapters, scheduler=scheduler)


class LoraEngine:
    """A :class:`~workers.generation.Generator`; ``cancelled`` says which of some job ids were cancelled,
    ``deltas`` receives the text of streamed rows as it is decoded."""

    def __init__(
        self, config: EngineConfig, *, cancelled: Cancelled | None = None, deltas: Deltas | None = None
    ) -> None:
        """Load the model on the engine's own thread, which then runs the step loop.

        Every forward, and the loading, happen on that one thread: with the
        GNU OpenMP runtime of torch's CPU builds, once the main thread has run
        parallel torch ops, other threads run them about 1.5x slower (measured
        here), and a Celery worker's main thread is the one that starts the engine.
        """
        self.config = config
        built: list[_Parts] = []
        failed: list[BaseException] = []
        ready = threading.Event()

        def serve() -> None:
            try:
                built.append(_build(config, cancelled, deltas))
            except BaseException as exc:
                failed.append(exc)
                return
            finally:
                ready.set()
            built[0].scheduler.run()

        self._thread = threading.Thread(target=serve, name="loraq-engine", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        parts = built[0]
        self.runner = parts.runner
        self.budget = parts.budget
        self.adapters = parts.adapters
        self.scheduler = parts.scheduler

    # -- the Generator interface -------------------------------------------------

    def resident_adapters(self) -> frozenset[str]:
        return self.adapters.resident()

    def adapter_loads(self) -> int:
        return self.adapters.loads()

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return chat.render(self.runner.tokenizer, messages)

    def describe(self) -> str:
        c, runner = self.config, self.runner
        params = sum(p.numel() for p in runner.model.parameters())
        return (
            f"loraq engine: {runner.name} on {runner.device} ({runner.dtype}), {params / 1e6:.2f}M params, "
            f"{len(runner.layers)} LoRA modules, max_loras={c.max_loras} rank<={c.max_lora_rank}, "
            f"max_rows={c.max_rows}; {self.budget.describe()}"
        )

    def generate(self, requests: Sequence[GenRequest]) -> list[GenerationResult]:
        """Run the requests in the engine's running batch and wait for all of them.

        Safe to call from several threads: every call's rows join the one
        running batch at step boundaries (continuous batching across calls).
        Raises the first row error (after every row has ended), so the caller
        can retry rows alone to find which one is at fault.
        """
        return self.scheduler.generate([self.runner.prepare(i, r) for i, r in enumerate(requests)])

    def score(self, requests: Sequence[GenRequest]) -> list[torch.Tensor]:
        """Each prompt's logits at every prompt position ([tokens, vocab]), rows of different
        adapters in one forward. At most ``max_loras`` distinct adapters."""
        rows = [self.runner.prepare(i, r) for i, r in enumerate(requests)]
        keys = {r.key for r in rows if r.key}
        if len(keys) > self.config.max_loras:
            raise ValueError(f"{len(keys)} adapters in one forward; this engine holds {self.config.max_loras}")
        for row in rows:
            if row.req.adapter is not None:
                self.adapters.ensure_host(row.req.adapter)
        with self.scheduler.step_lock:
            for row in rows:
                slot = self.adapters.slot_for(row.req.adapter, pinned=keys | self.scheduler.pinned)
                if slot is None:
                    raise RuntimeError("every adapter slot is in use by running rows; score when the engine is idle")
                row.slot = slot
            self.adapters.activate([r.slot for r in rows])
            return self.runner.score(rows)

    def close(self) -> None:
        self.scheduler.close()
        self._thread.join(5)
        self.adapters.close()
