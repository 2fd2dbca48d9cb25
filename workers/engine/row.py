"""One request in flight through the loraq engine: its prompt, its tokens so far, its future.

Torch-free at import (the scheduler and its tests use it without a model);
the per-row ``torch.Generator`` is only named in annotations.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from registry.schemas import GenerationResult
from workers.generation import GenRequest

if TYPE_CHECKING:
    import torch


@dataclass
class Row:
    index: int  # position in the caller's request list
    req: GenRequest
    prompt_ids: list[int]
    cap: int  # new tokens allowed: max_tokens, bounded by the model's positions
    generator: torch.Generator | None  # a seeded row's own random stream
    slot: int = 0  # the adapter slot it runs in; 0 is the base model
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of its text already published (streamed rows)
    cancelled: bool = False
    exclusive: bool = False  # runs alone: it shared a step that failed, and may be the cause
    arrived: float = field(default_factory=time.monotonic)
    future: Future[GenerationResult] = field(default_factory=Future)

    def restart(self, generator: torch.Generator | None) -> None:
        """Back to its prompt, to run again alone (``generator``: a fresh stream for its seed)."""
        self.tokens = []
        self.sent = 0  # its text is published again from the start; readers skip what they have
        self.generator = generator
        self.exclusive = True

    @property
    def key(self) -> str | None:
        return self.req.adapter.key if self.req.adapter else None
