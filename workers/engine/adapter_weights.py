"""Read a PEFT LoRA (or DoRA) directory into per-module ``(A, B, scale, magnitude)`` for the slots.

The bytes are read once: the sha256 is checked on exactly the bytes that are
parsed (no window where the file changes between check and load), and
weights are parsed with safetensors (never pickle). Everything a mixed
batch cannot serve is refused here, with the registry's codes, before the
adapter touches a slot. A copy of a base weight that PEFT saved with the
adapter (``base_layer``, by default for a targeted embedding or LM head) is
compared with the base's own weight and must equal it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors

from registry.artifacts.checks import CONFIG_FILE, WEIGHTS_FILE, check_lora_config
from registry.artifacts.keys import Part, parse_key
from registry.errors import InvalidAdapter
from workers.errors import AdapterLoadFailed, AdapterRefused


@dataclass(frozen=True)
class ModuleDelta:
    """One module's pair in the slot layout, prepared off the step loop: a swap is then a plain copy."""

    a: torch.Tensor  # lora_A transposed: [in, r], contiguous
    b: torch.Tensor  # lora_B transposed and times the scale: [r, out], contiguous
    scale: float  # alpha / r (alpha / sqrt(r) with rsLoRA), already in b
    magnitude: torch.Tensor | None = None  # DoRA's magnitude vector [out]; None: plain LoRA
    b_raw: torch.Tensor | None = None  # DoRA only: lora_B transposed, unscaled [r, out] (for its norm)

    @property
    def nbytes(self) -> int:
        tensors = (self.a, self.b, self.magnitude, self.b_raw)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


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


@dataclass(frozen=True)
class BaseModules:
    """What an adapter is checked against: each servable module's (in, out), the other module names
    (for a precise refusal), the weights a saved copy must equal, and whether DoRA is served."""

    shapes: Mapping[str, tuple[int, ...]]
    known: Collection[str] = ()
    originals: Mapping[str, torch.Tensor] = field(default_factory=dict)  # never-merged modules' weights
    dora: bool = True


def read_adapter(
    path: Path, *, key: str, sha256: str | None, base: BaseModules, r_max: int, dtype: torch.dtype
) -> HostAdapter:
    """Parse and check one adapter against ``base``."""
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
    if cfg.get("use_dora") and not base.dora:
        raise AdapterRefused(
            "DoRA is not served on a quantized base (its weight norm needs the full-precision weights); "
            "serve it on a worker without LORAQ_QUANTIZE",
            code="adapter_dora_unsupported",
        )
    parts: dict[str, dict[Part, torch.Tensor]] = {}
    for name, tensor in load_safetensors(raw).items():
        parsed = parse_key(name)
        if parsed is None:
            raise AdapterRefused(
                f"tensor {name!r} is not a LoRA weight; only LoRA and DoRA are served (no saved modules or biases)",
                code="adapter_weights_invalid",
            )
        parts.setdefault(parsed.module, {})[parsed.part] = tensor
    modules = {
        module: _delta(module, found, cfg=cfg, base=base, r_max=r_max, dtype=dtype) for module, found in parts.items()
    }
    if not modules:
        raise AdapterRefused("the adapter holds no LoRA weights", code="adapter_weights_invalid")
    nbytes = sum(m.nbytes for m in modules.values())
    return HostAdapter(key=key, modules=modules, nbytes=nbytes, rank=max(m.a.shape[1] for m in modules.values()))


def _delta(
    module: str,
    parts: Mapping[Part, torch.Tensor],
    *,
    cfg: Mapping[str, Any],
    base: BaseModules,
    r_max: int,
    dtype: torch.dtype,
) -> ModuleDelta:
    """One module's pair (and DoRA magnitude), checked against the base module and the slot rank."""
    shape = _servable_shape(module, base)
    a, b = parts.get(Part.A), parts.get(Part.B)
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
    magnitude = _magnitude(module, parts.get(Part.MAGNITUDE), dora=bool(cfg.get("use_dora")), out_f=out_f)
    if not all(bool(torch.isfinite(t).all()) for t in (a, b, magnitude) if t is not None):
        raise AdapterRefused(f"module {module!r} has NaN or infinite weights", code="adapter_weights_not_finite")
    _check_copy(module, parts.get(Part.BASE), base)
    scale = module_scale(cfg, module, rank)
    a_t = a.t().to(dtype).contiguous()
    b_t = (b.t().to(torch.float32) * scale).to(dtype).contiguous()
    if magnitude is None:
        return ModuleDelta(a=a_t, b=b_t, scale=scale)
    b_raw = b.t().to(dtype).contiguous()
    return ModuleDelta(a=a_t, b=b_t, scale=scale, magnitude=magnitude.to(dtype), b_raw=b_raw)


def _servable_shape(module: str, base: BaseModules) -> tuple[int, ...]:
    shape = base.shapes.get(module)
    if shape is not None:
        return shape
    if module in base.known:
        raise AdapterRefused(
            f"LoRA on {module!r} is not served: only the linear modules inside the decoder blocks, the input "
            "embedding and the LM head take adapters (the last two unless LORAQ_EMBEDDING_LORA is off)",
            code="adapter_module_unsupported",
        )
    raise AdapterRefused(
        f"module {module!r} does not exist in the base model; the adapter belongs to another base",
        code="adapter_base_mismatch",
    )


def _magnitude(module: str, magnitude: torch.Tensor | None, *, dora: bool, out_f: int) -> torch.Tensor | None:
    """DoRA's magnitude vector: one per module of a DoRA adapter (use_dora), [out]; none otherwise."""
    if (magnitude is not None) != dora or (magnitude is not None and tuple(magnitude.shape) != (out_f,)):
        raise AdapterRefused(
            f"module {module!r}: a DoRA adapter (use_dora) holds one magnitude vector of {out_f} values per "
            "module, and a plain LoRA none",
            code="adapter_weights_invalid",
        )
    return magnitude


def _check_copy(module: str, copy: torch.Tensor | None, base: BaseModules) -> None:
    """A saved copy of the base weight must equal the base's (compared in the base's dtype)."""
    if copy is None:
        return
    original = base.originals.get(module)
    if original is None:
        raise AdapterRefused(
            f"the adapter saves the weights of {module!r}; only an embedding's or LM head's copy is accepted",
            code="adapter_weights_invalid",
        )
    if copy.shape != original.shape or not torch.equal(copy.to(original.device, original.dtype), original):
        raise AdapterRefused(
            f"the adapter carries its own weights for {module!r}, which differ from this base's (a resized "
            "vocabulary, or another base); adapters here share one base",
            code="adapter_base_mismatch",
        )
