"""What each tensor of a PEFT LoRA file is: the one parser of its key names, for the registry and the engine.

PEFT saves, per targeted module (``<module>`` is the base model's module name):

- ``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight`` [out, r] on a linear module;
- ``<module>.lora_embedding_A`` [r, vocab] and ``<module>.lora_embedding_B`` [dim, r] on an embedding
  (the same roles: in = vocab, out = dim);
- ``<module>.lora_magnitude_vector`` [out] with DoRA (older PEFT versions add ``.weight``);
- ``<module>.base_layer.weight``: a full copy of the base weight, which ``save_pretrained`` writes by
  default for a targeted embedding or LM head. It is served only if it equals the base's own weight
  (the registry checks its shape, the engine its values).

Keys may start with ``base_model.model.`` and carry an adapter name (``lora_A.default.weight``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Part(StrEnum):
    A = "A"
    B = "B"
    MAGNITUDE = "magnitude"
    BASE = "base"  # a saved copy of the base weight


_PARTS = {
    "lora_A": Part.A,
    "lora_B": Part.B,
    "lora_embedding_A": Part.A,
    "lora_embedding_B": Part.B,
    "lora_magnitude_vector": Part.MAGNITUDE,
    "base_layer": Part.BASE,
}
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<part>"
    + "|".join(_PARTS)
    + r")(?:\.(?!bias$)[^.]+?)??(?:\.weight)?$"
)


@dataclass(frozen=True)
class TensorKey:
    module: str  # the base model's module name, e.g. model.layers.0.self_attn.q_proj
    part: Part


def parse_key(name: str) -> TensorKey | None:
    """The module and part a tensor of an adapter file holds; None for anything else."""
    match = _KEY.match(name)
    if match is None:
        return None
    return TensorKey(module=match["module"], part=_PARTS[match["part"]])
