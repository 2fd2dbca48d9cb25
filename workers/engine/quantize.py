"""A quantized shared base: the base's block linears quantized once, and every adapter benefits.

``LORAQ_QUANTIZE=int8`` replaces the base module inside each block linear's
mixed-LoRA layer by torch's dynamic int8 linear (weights int8 per output
channel; activations quantized per forward on the fly), on CPU. The LoRA side
paths (the slot stacks) stay in full precision, and so do the input
embedding and the LM head (the head's error would land straight in the
logits). Costs of the choice:

- activations are quantized with one scale per forward, so a row's output
  depends slightly on its batch mates (mixed rows stay close to PEFT on the
  same quantized base, not bit-equal);
- quantized layers are not mergeable (an int8 weight cannot take a delta
  and give it back exactly), and DoRA is refused (its weight norm needs the
  full-precision weights).

On a GPU this would be bitsandbytes' int8/nf4 or fp8; it is not built, and
the engine refuses to start rather than run unquantized silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.ao.nn.quantized.dynamic as quantized_dynamic
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig
from transformers.pytorch_utils import Conv1D

from workers.engine.layers import SlotLayer

Quantize = Literal["none", "int8"]


@dataclass(frozen=True)
class QuantizedBase:
    """What the quantized modules cost, and what they cost before: the memory plan prints the saving."""

    mode: str
    nbytes: int  # int8 weights, their scales and the biases
    full_nbytes: int  # the same modules unquantized


def quantize_base(
    layers: Mapping[str, SlotLayer], *, mode: Quantize, device: torch.device, dtype: torch.dtype
) -> QuantizedBase | None:
    """Quantize every mergeable (block, untied) linear's base module in place; None when ``mode`` is none."""
    if mode == "none":
        return None
    if device.type != "cpu" or dtype != torch.float32:
        raise ValueError(
            f"LORAQ_QUANTIZE={mode} is served on CPU with LORAQ_DTYPE=float32 (torch's dynamic int8); "
            f"not on {device.type} with {dtype}"
        )
    nbytes = full = 0
    for layer in layers.values():
        if not layer.mergeable:
            continue
        full += layer.weight.numel() * layer.weight.element_size() + _bias_bytes(layer.base)
        layer.base = int8_linear(layer.base)
        layer.mergeable = False
        nbytes += layer.out_features * (layer.in_features + 8) + _bias_bytes(layer.base)  # + scale, zero point
    return QuantizedBase(mode=mode, nbytes=nbytes, full_nbytes=full)


def int8_linear(module: nn.Module) -> nn.Module:
    """``module`` (``nn.Linear`` or ``Conv1D``) as torch's dynamic int8 linear, weights per output channel."""
    linear = module
    if isinstance(module, Conv1D):  # GPT-2's [in, out] weight: the same map as a Linear of its transpose
        in_f, out_f = module.weight.shape
        linear = nn.Linear(in_f, out_f)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            linear.bias.copy_(module.bias)
    setattr(linear, "qconfig", per_channel_dynamic_qconfig)  # noqa: B010 (how from_float reads its recipe)
    with warnings.catch_warnings():  # torch's quantized tensors are deprecated in favour of torchao
        warnings.simplefilter("ignore", UserWarning)
        quantized: nn.Module = quantized_dynamic.Linear.from_float(linear)  # type: ignore[no-untyped-call]
    return quantized


def _bias_bytes(module: nn.Module) -> int:
    """A float linear's ``bias`` is a tensor; a quantized one's a method returning it."""
    bias = getattr(module, "bias", None)
    if callable(bias) and not isinstance(bias, torch.Tensor):
        bias = bias()
    return int(bias.numel() * bias.element_size()) if isinstance(bias, torch.Tensor) else 0
