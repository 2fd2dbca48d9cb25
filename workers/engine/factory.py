"""The generator a worker runs: the loraq engine, or the PEFT baseline it is measured against."""

from __future__ import annotations

from typing import Literal

from workers.contract.streams import Deltas
from workers.engine.config import EngineConfig
from workers.engine.scheduler import Cancelled
from workers.generation import Generator


def build_generator(
    config: EngineConfig, *, kind: Literal["loraq", "peft"], cancelled: Cancelled, deltas: Deltas | None = None
) -> Generator:
    """Load the engine ``kind`` names (on this thread: loading takes seconds to minutes). Only the loraq
    engine streams (``deltas``); PEFT's ``generate`` returns whole texts, which readers get at the end."""
    if kind == "peft":
        from workers.engine.peft_baseline import PeftGenerator  # peft only where the baseline runs

        return PeftGenerator(config, cancelled=cancelled)
    from workers.engine.lora_engine import LoraEngine

    return LoraEngine(config, cancelled=cancelled, deltas=deltas)
