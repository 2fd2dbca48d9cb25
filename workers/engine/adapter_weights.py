"""Read a PEFT LoRA directory into per-module ``(A, B, scale)`` for the slots.

The bytes are read once: the sha256 is checked on exactly the bytes that are
parsed (no window where the file changes between check and load), and
weights are parsed with safetensors (never pickle). Everything a mixed
batch cannot serve is refused here, with the registry's codes, before the
adapter touches a slot.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors

from registry.artifacts.checks import CONFIG_FILE, LORA_KEY, WEIGHTS_FILE, check_lora_config
from registry.errors import InvalidAdapter
from workers.errors import AdapterLoadFailed, AdapterRefused


@dataclass(frozen=True)
class ModuleDelta:
    """One module's pair in the slot layout, prepared off the step loop: a swap is then a plain copy."""

    a: torch.Tensor  # lora_A transposed: [in, r], contiguous
    b: torch.Tensor  # lora_B transposed and times the scale: [r, out], contiguous
    scale: float  # alpha / r (alpha / sqrt(r) with rsLoRA), already in b


@dataclass(frozen=True)
class HostAdapter:
    """An adapter in host memory, ready to copy into a slot."""

    key: str
    modules: dict[str, ModuleDelta]
    nbytes: int
    rank: int


def pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """The ``rank_pattern``/``alpha_pattern`` key that applies to ``module``, as PEFT matches it."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def module_scale(cfg: Mapping[str, Any], module: str, rank: int) -> float:
    alphas: Mapping[str, Any] = cfg.get("alpha_pattern") or {}
    key = pattern_key(alphas, module)
    alpha = float(alphas[key]) if key is not None else float(cfg.get("lora_alpha", 8))
    return alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)


def read_adapter(
    path: Path,
    *,
    key: str,
    sha256: str | None,
    shapes: Mapping[str, tuple[int, int]],
    known: Collection[str] = (),
    r_max: int,
    dtype: torch.dtype,
) -> HostAdapter:
    """Parse and check one adapter; ``shapes`` maps each servable module to its (in, out),
    ``known`` names every other module of the base (for a precise refusal)."""
    try:
        raw = (path / WEIGHTS_FILE).read_bytes()
        cfg = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterLoadFailed(f"cannot read adapter {path}: {exc}") from exc
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise AdapterLoadFailed(f"adapter {path} changed since registration (sha256 mismatch); register it again")
    try:
        check_lora_config(cfg)
    except InvalidAdapter as exc:
        raise AdapterRefused(str(exc), code=exc.code) from exc
    tensors = load_safetensors(raw)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = LORA_KEY.match(name)
        if match is None:
            raise AdapterRefused(
                f"tensor {name!r} is not a LoRA A/B weight; only plain LoRA is served (no saved embeddings, "
                "biases or full module copies)",
                code="adapter_weights_invalid",
            )
        pairs.setdefault(match["module"], {})[match["side"]] = tensor
    modules = {
        module: _delta(module, sides, cfg=cfg, shape=shapes.get(module), known=known, r_max=r_max, dtype=dtype)
        for module, sides in pairs.items()
    }
    if not modules:
        raise AdapterRefused("the adapter holds no LoRA weights", code="adapter_weights_invalid")
    nbytes = sum(m.a.numel() * m.a.element_size() + m.b.numel() * m.b.element_size() for m in modules.values())
    return HostAdapter(key=key, modules=modules, nbytes=nbytes, rank=max(m.a.shape[1] for m in modules.values()))


def _delta(
    module: str,
    sides: Mapping[str, torch.Tensor],
    *,
    cfg: Mapping[str, Any],
    shape: tuple[int, int] | None,
    known: Collection[str],
    r_max: int,
    dtype: torch.dtype,
) -> ModuleDelta:
    """One module's pair, checked against the base module's (in, out) and the slot rank."""
    if shape is None:
        if module in known:
            raise AdapterRefused(
                f"LoRA on {module!r} is not served: only the linear modules inside the decoder blocks "
                "take adapters (not embeddings or the LM head); retrain without it",
                code="adapter_module_unsupported",
            )
        raise AdapterRefused(
            f"module {module!r} does not exist in the base model; the adapter belongs to another base",
            code="adapter_base_mismatch",
        )
    a, b = sides.get("A"), sides.get("B")
    in_f, out_f = shape
    if a is None or b is None or a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
        raise AdapterRefused(
            f"module {module!r}: LoRA weights do not fit the base weight ({in_f} -> {out_f})",
            code="adapter_base_mismatch",
        )
    rank = int(a.shape[0])
    if rank > r_max:
        raise AdapterRefused(
            f"module {module!r} has rank {rank}, above this worker's LORAQ_MAX_LORA_RANK={r_max}; "
            "raise it or serve a smaller rank",
            code="adapter_rank_too_large",
        )
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise AdapterRefused(f"module {module!r} has NaN or infinite weights", code="adapter_weights_not_finite")
    scale = module_scale(cfg, module, rank)
    a_t = a.t().to(dtype).contiguous()
    b_t = (b.t().to(torch.float32) * scale).to(dtype).contiguous()
    return ModuleDelta(a=a_t, b=b_t, scale=scale)
