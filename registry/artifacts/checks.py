"""Whether loraq can serve an adapter: a PEFT LoRA checked against the base model before anything serves it.

Torch-free on purpose (the gateway runs it at registration): safetensors
headers are JSON, so shapes are checked from headers alone and values are
read with numpy. Pickle weights (``.bin``) are never opened.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from registry.artifacts.keys import Part, parse_key
from registry.artifacts.uri import local_path
from registry.errors import InvalidAdapter

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
_DTYPES: dict[str, Any] = {"F32": np.float32, "F16": np.float16, "BF16": "bf16"}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class AdapterInfo:
    """What the registry records about a validated adapter version."""

    path: Path
    r: int
    alpha: float
    target_modules: list[str]
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class TensorMeta:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorMeta], int]:
    """Tensor name -> metadata, and the byte offset where data starts."""
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise InvalidAdapter(
                f"{path.name} is not a safetensors file.",
                code="adapter_weights_invalid",
            )
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise InvalidAdapter(
                f"{path.name} has an implausible header.",
                code="adapter_weights_invalid",
            )
        try:
            header = json.loads(fh.read(length))
        except ValueError as exc:
            raise InvalidAdapter(
                f"{path.name} is not a safetensors file.",
                code="adapter_weights_invalid",
            ) from exc
    try:
        header.pop("__metadata__", None)
        tensors = {
            name: TensorMeta(str(meta["dtype"]), tuple(int(d) for d in meta["shape"]), *map(int, meta["data_offsets"]))
            for name, meta in header.items()
        }
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidAdapter(
            f"{path.name} has a malformed safetensors header.", code="adapter_weights_invalid"
        ) from exc
    return tensors, 8 + length


def base_weight_shapes(base_dir: Path) -> dict[str, tuple[int, ...]]:
    """Every weight name -> shape of a local HF model directory (single or sharded)."""
    index = base_dir / "model.safetensors.index.json"
    files = (
        sorted({base_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
        if index.exists()
        else [base_dir / "model.safetensors"]
    )
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        tensors, _ = read_safetensors_header(file)
        shapes.update({name: meta.shape for name, meta in tensors.items()})
    return _with_tied_head(shapes, base_dir)


_INPUT_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")


def _with_tied_head(shapes: dict[str, tuple[int, ...]], base_dir: Path) -> dict[str, tuple[int, ...]]:
    """A model whose LM head shares the input embedding's weight (``tie_word_embeddings``, GPT-2's
    default) saves no ``lm_head.weight``; LoRA on ``lm_head`` is checked against the shared weight."""
    config = base_dir / "config.json"
    tied = json.loads(config.read_text()).get("tie_word_embeddings", True) if config.is_file() else False
    embedding = next((name for name in shapes if name.endswith(_INPUT_EMBEDDINGS)), None)
    if tied and embedding is not None and "lm_head.weight" not in shapes:
        shapes["lm_head.weight"] = shapes[embedding]
    return shapes


def load_config(path: Path) -> dict[str, Any]:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise InvalidAdapter(
            f"{path} has no {CONFIG_FILE}; save the adapter with PEFT's save_pretrained.",
            code="adapter_config_missing",
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise InvalidAdapter(f"{CONFIG_FILE} is not valid JSON: {exc}", code="adapter_config_invalid") from exc
    if not isinstance(cfg, dict):
        raise InvalidAdapter(f"{CONFIG_FILE} must be a JSON object.", code="adapter_config_invalid")
    return cfg


_UNBATCHABLE = {
    "lora_bias": "a bias on lora_B",
    "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "use_bdlora": "block-diagonal LoRA",
}


def check_lora_config(cfg: dict[str, Any]) -> None:
    """Refuse what a mixed-adapter batch cannot serve (shared by the registry and the engine)."""
    if cfg.get("peft_type") != "LORA":
        raise InvalidAdapter(
            f"peft_type {cfg.get('peft_type')!r} is not served; loraq serves LoRA adapters only.",
            code="adapter_type_unsupported",
        )
    if cfg.get("modules_to_save"):
        raise InvalidAdapter(
            "modules_to_save changes base weights per adapter and cannot be batched; "
            "retrain with LoRA on those modules instead.",
            code="adapter_modules_to_save_unsupported",
        )
    for option, what in _UNBATCHABLE.items():
        if cfg.get(option):
            raise InvalidAdapter(
                f"{what} ({option} in {CONFIG_FILE}) is not served in mixed batches; retrain with plain LoRA.",
                code="adapter_feature_unsupported",
            )


def _module_shapes(tensors: dict[str, TensorMeta], base: dict[str, tuple[int, ...]], *, dora: bool) -> dict[str, int]:
    """Check every module's tensors against its base weight; return module -> rank."""
    modules: dict[str, dict[Part, tuple[int, ...]]] = {}
    for name, meta in tensors.items():
        key = parse_key(name)
        if key is None:
            raise InvalidAdapter(
                f"tensor {name!r} is not a LoRA weight; only LoRA (and DoRA) tensors are served.",
                code="adapter_weights_invalid",
            )
        if meta.dtype not in _DTYPES:
            raise InvalidAdapter(
                f"tensor {name!r} has dtype {meta.dtype}; use F32, F16 or BF16.",
                code="adapter_dtype_unsupported",
            )
        modules.setdefault(key.module, {})[key.part] = meta.shape
    ranks = {
        module: _check_module(module, parts, base.get(f"{module}.weight"), dora=dora)
        for module, parts in modules.items()
    }
    if not ranks:
        raise InvalidAdapter("the adapter holds no LoRA weights.", code="adapter_weights_invalid")
    return ranks


def _check_module(
    module: str, parts: dict[Part, tuple[int, ...]], base_shape: tuple[int, ...] | None, *, dora: bool
) -> int:
    """One module's LoRA pair (and DoRA magnitude, saved base copy) against its base weight; its rank."""
    if base_shape is None:
        raise InvalidAdapter(
            f"module {module!r} does not exist in the base model; is this an adapter of another base?",
            code="adapter_base_mismatch",
        )
    a, b = parts.get(Part.A), parts.get(Part.B)
    if a is None or b is None or len(a) != 2 or len(b) != 2 or len(base_shape) != 2:
        raise InvalidAdapter(f"module {module!r} lacks a 2-D lora_A/lora_B pair.", code="adapter_weights_invalid")
    # nn.Linear stores [out, in]; GPT-2's Conv1D [in, out]; an embedding [vocab, dim] with its pair
    # [r, vocab] / [dim, r]. LoRA's pair is [r, in] / [out, r] for all of them.
    layouts = {(base_shape[1], base_shape[0]), (base_shape[0], base_shape[1])}
    copy = parts.get(Part.BASE)
    if (a[1], b[0]) not in layouts or a[0] != b[1] or copy not in (None, base_shape):
        raise InvalidAdapter(
            f"module {module!r}: lora_A {list(a)} and lora_B {list(b)} do not fit the base "
            f"weight {list(base_shape)}; the adapter was trained on another base.",
            code="adapter_base_mismatch",
        )
    magnitude = parts.get(Part.MAGNITUDE)
    if (magnitude is not None) != dora or (magnitude is not None and magnitude != (b[0],)):
        raise InvalidAdapter(
            f"module {module!r}: a DoRA adapter (use_dora) holds one magnitude vector of {b[0]} values per "
            "module, and a plain LoRA none.",
            code="adapter_weights_invalid",
        )
    return a[0]


def _check_finite(weights: Path, tensors: dict[str, TensorMeta], data_start: int) -> None:
    with weights.open("rb") as fh:
        for name, meta in tensors.items():
            fh.seek(data_start + meta.start)
            raw = fh.read(meta.end - meta.start)
            kind = _DTYPES[meta.dtype]
            width = 2 if kind in ("bf16", np.float16) else 4
            if len(raw) != meta.end - meta.start or len(raw) % width or len(raw) // width != _numel(meta.shape):
                raise InvalidAdapter(f"tensor {name!r} is truncated or mis-sized.", code="adapter_weights_invalid")
            if kind == "bf16":
                values = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                values = np.frombuffer(raw, dtype=kind)
            if not np.isfinite(values).all():
                raise InvalidAdapter(
                    f"tensor {name!r} holds NaN or infinite values.",
                    code="adapter_weights_not_finite",
                )


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _alpha(cfg: dict[str, Any]) -> float:
    try:
        return float(cfg.get("lora_alpha", cfg.get("r", 8)))
    except (TypeError, ValueError) as exc:
        raise InvalidAdapter(
            "lora_alpha in adapter_config.json is not a number.", code="adapter_config_invalid"
        ) from exc


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_within_roots(path: Path, roots: Sequence[Path]) -> Path:
    """``path`` with every symlink and ``..`` resolved, if it and the files it holds lie under a root.

    Checked before anything is read, so a registration cannot probe or read
    files elsewhere on the gateway's host, through ``../`` or a symlink.
    """
    resolved = path.resolve()
    bases = [r.expanduser().resolve() for r in roots]
    inside = [resolved, *((resolved / f).resolve() for f in (CONFIG_FILE, WEIGHTS_FILE))]
    if not all(any(p.is_relative_to(b) for b in bases) for p in inside):
        raise InvalidAdapter(
            f"{path} is outside the adapter roots ({', '.join(str(b) for b in bases)}); put the adapter under one "
            "of them, or add its directory to LORAQ_ADAPTER_ROOTS.",
            code="adapter_uri_outside_roots",
        )
    return resolved


def validate_adapter(uri: str, *, base_dir: Path, max_bytes: int, roots: Sequence[Path] | None = None) -> AdapterInfo:
    """Everything the registry needs to know, or :class:`InvalidAdapter` with a code.

    With ``roots`` (the gateway always passes them), a path outside them is
    refused before anything is read."""
    path = local_path(uri)
    path = check_within_roots(path, roots) if roots is not None else path.resolve()
    if not path.is_dir():
        raise InvalidAdapter(f"adapter directory {path} does not exist.", code="adapter_not_found")
    cfg = load_config(path)
    check_lora_config(cfg)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        pickled = [p for p in PICKLE_FILES if (path / p).exists()]
        if pickled:
            raise InvalidAdapter(
                f"{pickled[0]} is a pickle file and is never loaded; save with safe_serialization=True.",
                code="adapter_pickle_refused",
            )
        raise InvalidAdapter(f"{path} has no {WEIGHTS_FILE}.", code="adapter_weights_missing")
    size = weights.stat().st_size
    if size > max_bytes:
        raise InvalidAdapter(
            f"adapter weights are {size} bytes, above the limit of {max_bytes} (LORAQ_MAX_ADAPTER_BYTES).",
            code="adapter_too_large",
        )
    tensors, data_start = read_safetensors_header(weights)
    ranks = _module_shapes(tensors, base_weight_shapes(base_dir), dora=bool(cfg.get("use_dora")))
    _check_finite(weights, tensors, data_start)
    leaf_modules = sorted({m.rsplit(".", 1)[-1] for m in ranks})
    return AdapterInfo(
        path=path,
        r=max(ranks.values()),
        alpha=_alpha(cfg),
        target_modules=leaf_modules,
        sha256=file_sha256(weights),
        size_bytes=size,
    )
