"""The generation engine: one resident base model serving many LoRA adapters in mixed batches.

Importing this package imports torch; the worker's torch-free parts
(:mod:`workers.runtime`, the batcher) know only :class:`workers.generation.Generator`.
"""

from workers.engine.config import EngineConfig
from workers.engine.factory import build_generator
from workers.engine.lora_engine import LoraEngine

__all__ = ["EngineConfig", "LoraEngine", "build_generator"]
