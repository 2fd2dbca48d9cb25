"""Attention for a packed step: running rows decode and joining rows prefill in one forward.

Without it, a row joining the running batch costs a forward of its own (its
prompt's prefill) before the decode step: a whole pass over the weights for
a few prompts, which is what a decode step costs too. A packed step runs
both in one forward, as vLLM's mixed prefill/decode batches do: the
sequence ``[1, tokens]`` holds each running row's next token, then each
joining row's prompt left-padded to the longest (:class:`~workers.engine.kv.Packed`).
The linear modules and the LoRA side paths run over it unchanged (a
per-token adapter map, :class:`~workers.engine.layers.LoRABatch`); only
attention must know which token is whose:

- the running rows' queries attend their own slots of the KV cache (which
  the cache's update has just written their new keys into), as a decode
  step does;
- each joining row's queries attend its own prompt's keys, causally (the
  update has written them into the row's new slot as well).

Registered as the model's attention implementation (``loraq_slots``) when
the model runs on torch's SDPA; outside a packed step (plain prefill,
decode, scoring) it is SDPA itself, with SDPA's masks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from workers.engine.kv import SLOT_ATTENTION, AttentionMask, KVBatch, Packed

NAME = SLOT_ATTENTION

_ACTIVE: ContextVar[tuple[KVBatch, Packed] | None] = ContextVar("loraq_packed_step", default=None)


def _mask_for(mask: AttentionMask, module: torch.nn.Module) -> torch.Tensor:
    if not isinstance(mask, dict):
        return mask
    types = getattr(module.config, "layer_types", None)
    return mask[types[_layer(module)] if types else "full_attention"]


def _layer(module: torch.nn.Module) -> int:
    """The attention module's decoder layer (transformers numbers them ``layer_idx``)."""
    index = module.layer_idx
    assert isinstance(index, int)
    return index


def slot_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query`` [1, heads, tokens, dim] of a packed step -> [1, tokens, heads, dim]; else SDPA's."""
    active = _ACTIVE.get()
    if active is None:
        out: tuple[torch.Tensor, None] = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return out
    kv, packed = active
    n, k, width = packed.decode, packed.joining, packed.width
    heads, dim = query.shape[1], query.shape[3]
    layer = kv.layers[_layer(module)]
    length = kv.attended
    decode, _ = sdpa_attention_forward(
        module,
        query[0, :, :n].transpose(0, 1).unsqueeze(2),  # [n, heads, 1, dim]
        layer.keys[:n, :, :length],
        layer.values[:n, :, :length],
        _mask_for(packed.decode_mask, module),
        **kwargs,
    )  # [n, 1, heads, dim]
    kv_heads = key.shape[1]
    prompts, _ = sdpa_attention_forward(
        module,
        query[0, :, n:].reshape(heads, k, width, dim).transpose(0, 1),  # [k, heads, width, dim]
        key[0, :, n:].reshape(kv_heads, k, width, dim).transpose(0, 1),
        value[0, :, n:].reshape(kv_heads, k, width, dim).transpose(0, 1),
        _mask_for(packed.prompt_mask, module),
        **kwargs,
    )  # [k, width, heads, dim]
    return torch.cat([decode.reshape(n, heads, dim), prompts.reshape(k * width, heads, dim)]).unsqueeze(0), None


@contextmanager
def packed_step(kv: KVBatch, packed: Packed) -> Iterator[None]:
    """The forward run inside is the packed step ``packed`` over ``kv``."""
    token = _ACTIVE.set((kv, packed))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def install(model: PreTrainedModel) -> bool:
    """Make :func:`slot_attention` the model's attention if it runs on SDPA; whether it does now."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, slot_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True
