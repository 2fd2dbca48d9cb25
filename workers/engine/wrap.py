"""Which modules of a base model take adapters, and wrapping them once at start-up.

The targets are the linear modules inside the decoder blocks, and, with
``embeddings``, the input embedding and the LM head. Anything else an
adapter targets (a position embedding, a linear outside the blocks) is
refused when the adapter is loaded, with ``adapter_module_unsupported``.
Only block linears whose weight no other module shares are mergeable: a
tied LM head shares the input embedding's weight, and merging into one would
change the other.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from workers.engine.embedding_layer import MixedEmbedding
from workers.engine.layers import LoRABatch, MixedLoRA, SlotLayer

_IN_BLOCK = re.compile(r"(^|\.)\d+\.")  # a numbered decoder block: model.layers.3.…, transformer.h.3.…


def block_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear module inside the decoder blocks, by its qualified name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and _IN_BLOCK.search(name)
    }


def edge_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The input embedding (an ``nn.Embedding``) and the LM head (an ``nn.Linear``), by name."""
    embed: object = model.get_input_embeddings() if isinstance(model, PreTrainedModel) else None
    head: object = getattr(model, "get_output_embeddings", lambda: None)()  # untyped in transformers
    return {
        name: module
        for name, module in model.named_modules()
        if (module is embed and isinstance(module, nn.Embedding)) or (module is head and isinstance(module, nn.Linear))
    }


def _shared_weights(model: nn.Module) -> set[int]:
    """``id`` of every weight that two modules share."""
    seen: dict[int, int] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            seen[id(weight)] = seen.get(id(weight), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def wrap(
    model: nn.Module, *, slots: int, r_max: int, embeddings: bool = False
) -> tuple[LoRABatch, dict[str, SlotLayer]]:
    """Replace every target module by a :class:`SlotLayer` around it, in place.

    ``embeddings``: the input embedding and the LM head take adapters too (their slots cost
    about ``2 x slots x vocab x r_max`` values).
    """
    batch = LoRABatch()
    shared = _shared_weights(model)
    blocks = block_linears(model)
    edges = edge_modules(model) if embeddings else {}
    targets = {**blocks, **edges}
    wrapped: dict[str, SlotLayer] = {}
    for name, module in targets.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer: SlotLayer
        if isinstance(module, nn.Embedding):
            layer = MixedEmbedding(module, slots=slots, r_max=r_max, batch=batch)
        else:
            layer = MixedLoRA(module, slots=slots, r_max=r_max, batch=batch)
            layer.mergeable = name in blocks and id(module.weight) not in shared
        layer.is_edge = name in edges
        setattr(parent, child, layer)
        wrapped[name] = layer
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no linear modules in decoder blocks to serve LoRA on")
    return batch, wrapped
