"""Tiny random-weight base models of each supported family, and PEFT adapters for them.

Built in the test (nothing downloaded), fp32, with the demo's byte-level
tokenizer so the engine can load them like any local model directory.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

from registry.artifacts.checks import file_sha256
from workers.demo_model import DEMO_BASE
from workers.generation import AdapterRef

VOCAB = 260  # the demo tokenizer's
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

_SHAPE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    **SPECIAL,
}

FAMILIES: dict[str, tuple[Callable[[], PretrainedConfig], list[str]]] = {
    "llama": (lambda: LlamaConfig(**_SHAPE), LLAMA_TARGETS),
    "qwen2": (lambda: Qwen2Config(**_SHAPE), LLAMA_TARGETS),
    "mistral": (lambda: MistralConfig(**_SHAPE, sliding_window=None), LLAMA_TARGETS),
    "gpt2": (
        lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, **SPECIAL),
        ["c_attn", "c_proj", "c_fc"],
    ),
}


EDGE_TARGETS: dict[str, list[str]] = {  # the input embedding and the LM head, as PEFT names them
    "llama": ["embed_tokens", "lm_head"],
    "qwen2": ["embed_tokens", "lm_head"],
    "mistral": ["embed_tokens", "lm_head"],
    "gpt2": ["wte", "lm_head"],  # tied: one weight, two modules
}


def build_base(family: str, directory: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Save a random ``family`` model with the demo tokenizer into ``directory``; ``overrides`` are set on
    its config (a sliding window, say)."""
    torch.manual_seed(seed)
    config = FAMILIES[family][0]()
    for name, value in overrides.items():
        setattr(config, name, value)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = SPECIAL["eos_token_id"]
    model.generation_config.pad_token_id = SPECIAL["pad_token_id"]
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO_BASE / name, directory / name)
    return directory


def load_base(directory: Path) -> PreTrainedModel:
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return model.eval()


def save_adapter(
    base: PreTrainedModel, directory: Path, *, seed: int, save_embedding_layers: bool = False, **lora: Any
) -> Path:
    """A PEFT LoRA with random A and B (``init_lora_weights=False``), saved like a trained one."""
    torch.manual_seed(seed)
    config = LoraConfig(init_lora_weights=False, **lora)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():  # keep deltas modest so logits stay in a sane range
        for name, param in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:  # DoRA: magnitudes away from the initial norms, as trained ones are
                param.mul_(1 + 0.2 * torch.randn_like(param))
            elif "lora_" in name:
                param.mul_(0.5)
    peft_model.save_pretrained(directory, save_embedding_layers=save_embedding_layers)
    return directory


def peft_alone(base: PreTrainedModel, adapter: Path | None) -> PreTrainedModel:
    """The oracle: the base model with this one adapter, as PEFT runs it."""
    if adapter is None:
        return base
    model: PreTrainedModel = PeftModel.from_pretrained(copy.deepcopy(base), adapter).eval()
    return model


def adapter_ref(path: Path, key: str) -> AdapterRef:
    """How the worker names the adapter saved in ``path``: its key, its URI and its registered sha256."""
    return AdapterRef(key=key, uri=str(path), sha256=file_sha256(path / "adapter_model.safetensors"), name=key)
