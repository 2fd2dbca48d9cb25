"""The tiny demo model loraq ships: a byte-level copy base and LoRA skills.

Its paths are written here once, for the gateway, the CLI, the workers, the
benchmarks and the tests. Importing this package must stay torch-free: the
gateway and the CLI use it and :mod:`workers.demo_model.skills` to check
outputs by rule.
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent  # the shipped model, built by ``python -m workers.demo_model.build``
DEMO_BASE = DEMO_DIR / "base"  # the base model directory (Hugging Face layout)
DEMO_ADAPTERS = DEMO_DIR / "adapters"  # one PEFT adapter directory per skill


def adapter_dir(skill: str) -> Path:
    """The directory of the shipped adapter that learned ``skill`` (a key of ``SKILLS``)."""
    return DEMO_ADAPTERS / skill
