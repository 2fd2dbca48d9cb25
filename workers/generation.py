"""The small interface every generation engine implements.

The foundation runs PEFT's mixed-adapter ``generate``
(:mod:`workers.engine.peft_baseline`); the fast engine replaces it behind the same
two methods. Torch-free so the batcher and its tests do not need torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from registry.schemas import ChatMessage, GenerationResult, SamplingParams


@dataclass(frozen=True)
class AdapterRef:
    """One adapter version as the worker loads it: ``key`` is unique per version."""

    key: str
    uri: str
    sha256: str
    name: str = ""  # the adapter's name (its queue is lora.<name>), reported to the sticky policy


@dataclass(frozen=True)
class GenRequest:
    job_id: str
    prompt: str
    sampling: SamplingParams
    adapter: AdapterRef | None  # None: the base model alone
    stream: bool = False  # publish its text as it is decoded (engines that cannot, send it whole at the end)


class Generator(Protocol):
    def generate(self, requests: Sequence[GenRequest]) -> list[GenerationResult]:
        """One result per request, in order. Raises if the batch as a whole fails;
        the caller then retries rows alone to isolate a bad one."""
        ...

    def resident_adapters(self) -> frozenset[str]:
        """Names of the adapters loaded now (any version); safe to call from another thread."""
        ...

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """Chat turns as the prompt text this base model expects (its chat template)."""
        ...

    def describe(self) -> str:
        """One line for the start-up log: model, device, dtype, memory."""
        ...

    def adapter_loads(self) -> int:
        """Adapters loaded since start (each is a swap); announced in the heartbeat for operators and benchmarks."""
        ...
