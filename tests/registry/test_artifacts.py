"""``validate_adapter`` against real PEFT adapters of a tiny random Llama.

Each refusal is checked by its stable code, which the gateway and the CLI show.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from registry.artifacts.checks import CONFIG_FILE, WEIGHTS_FILE, validate_adapter
from registry.errors import InvalidAdapter
from workers.demo_model import DEMO_ADAPTERS, DEMO_BASE, adapter_dir

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

MAX_BYTES = 64 * 1024 * 1024
TARGETS = ["q_proj", "v_proj"]
LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

MakeAdapter = Callable[..., Path]


def tiny_llama(hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=64,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base")
    tiny_llama().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture
def make_adapter(tmp_path: Path) -> MakeAdapter:
    """Save a PEFT adapter of a tiny Llama under ``tmp_path/name`` and return its directory."""

    def make(
        name: str = "adapter",
        *,
        config: PeftConfig | None = None,
        hidden: int = 32,
        safe: bool = True,
    ) -> Path:
        peft_config = config or LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
        out = tmp_path / name
        get_peft_model(tiny_llama(hidden), peft_config).save_pretrained(str(out), safe_serialization=safe)
        return out

    return make


def refusal_code(uri: str | Path, base_dir: Path, max_bytes: int = MAX_BYTES) -> str:
    with pytest.raises(InvalidAdapter) as caught:
        validate_adapter(str(uri), base_dir=base_dir, max_bytes=max_bytes)
    return caught.value.code


def test_good_adapter_validates_with_its_shape_and_digest(make_adapter: MakeAdapter, base_dir: Path) -> None:
    path = make_adapter()
    weights = path / WEIGHTS_FILE

    info = validate_adapter(str(path), base_dir=base_dir, max_bytes=MAX_BYTES)

    assert info.path == path.resolve()
    assert info.r == 4
    assert info.alpha == 8.0
    assert info.target_modules == TARGETS
    assert info.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info.size_bytes == weights.stat().st_size


def test_file_uri_names_the_same_adapter(make_adapter: MakeAdapter, base_dir: Path) -> None:
    path = make_adapter()
    by_path = validate_adapter(str(path), base_dir=base_dir, max_bytes=MAX_BYTES)
    by_uri = validate_adapter(path.as_uri(), base_dir=base_dir, max_bytes=MAX_BYTES)
    assert by_uri == by_path


def test_rank_is_the_largest_rank_of_any_module(make_adapter: MakeAdapter, base_dir: Path) -> None:
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, rank_pattern={"v_proj": 8})
    info = validate_adapter(str(make_adapter(config=config)), base_dir=base_dir, max_bytes=MAX_BYTES)
    assert info.r == 8


def test_all_linear_rslora_adapter_lists_every_projection(make_adapter: MakeAdapter, base_dir: Path) -> None:
    config = LoraConfig(r=8, lora_alpha=8, use_rslora=True, target_modules="all-linear")
    info = validate_adapter(str(make_adapter(config=config)), base_dir=base_dir, max_bytes=MAX_BYTES)
    assert info.target_modules == sorted(LLAMA_LINEARS)


def test_missing_config_is_refused(make_adapter: MakeAdapter, base_dir: Path) -> None:
    path = make_adapter()
    (path / CONFIG_FILE).unlink()
    assert refusal_code(path, base_dir) == "adapter_config_missing"


def test_pickle_weights_are_refused(make_adapter: MakeAdapter, base_dir: Path) -> None:
    path = make_adapter(safe=False)
    assert (path / "adapter_model.bin").is_file()
    assert not (path / WEIGHTS_FILE).exists()
    assert refusal_code(path, base_dir) == "adapter_pickle_refused"


def test_a_dora_adapter_is_accepted_with_one_magnitude_vector_per_module(
    make_adapter: MakeAdapter, base_dir: Path
) -> None:
    path = make_adapter(config=LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=True))
    assert validate_adapter(str(path), base_dir=base_dir, max_bytes=MAX_BYTES).target_modules == TARGETS

    weights = load_file(path / WEIGHTS_FILE)
    del weights[next(name for name in sorted(weights) if "lora_magnitude_vector" in name)]
    save_file(weights, path / WEIGHTS_FILE, metadata={"format": "pt"})
    assert refusal_code(path, base_dir) == "adapter_weights_invalid"


def test_lora_on_the_embedding_and_lm_head_is_accepted_with_peft_default_saved_copies(
    make_adapter: MakeAdapter, base_dir: Path
) -> None:
    """PEFT saves a copy of a targeted embedding's and LM head's base weight by default (``base_layer``)."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens", "lm_head"], use_dora=True)
    path = make_adapter(config=config)
    assert any("base_layer" in name for name in load_file(path / WEIGHTS_FILE))
    info = validate_adapter(str(path), base_dir=base_dir, max_bytes=MAX_BYTES)
    assert info.target_modules == ["embed_tokens", "lm_head", "q_proj"]


def test_a_saved_base_copy_of_another_shape_is_refused(make_adapter: MakeAdapter, base_dir: Path) -> None:
    path = make_adapter(config=LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens"]))
    weights = load_file(path / WEIGHTS_FILE)
    name = next(name for name in weights if "base_layer" in name)
    weights[name] = torch.cat([weights[name], weights[name][:1]])  # a resized vocabulary
    save_file(weights, path / WEIGHTS_FILE, metadata={"format": "pt"})
    assert refusal_code(path, base_dir) == "adapter_base_mismatch"


def test_non_lora_peft_type_is_refused(make_adapter: MakeAdapter, base_dir: Path) -> None:
    config = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
    path = make_adapter(config=config)
    assert json.loads((path / CONFIG_FILE).read_text())["peft_type"] == "IA3"
    assert refusal_code(path, base_dir) == "adapter_type_unsupported"


def test_modules_to_save_is_refused(make_adapter: MakeAdapter, base_dir: Path) -> None:
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, modules_to_save=["lm_head"])
    assert refusal_code(make_adapter(config=config), base_dir) == "adapter_modules_to_save_unsupported"


def test_adapter_of_another_base_is_refused(make_adapter: MakeAdapter, base_dir: Path) -> None:
    assert refusal_code(make_adapter(hidden=48), base_dir) == "adapter_base_mismatch"


def test_adapter_for_modules_the_base_lacks_is_refused(make_adapter: MakeAdapter, base_dir: Path) -> None:
    path = make_adapter()
    weights = load_file(path / WEIGHTS_FILE)
    renamed = {name.replace("layers.1.", "layers.7."): tensor for name, tensor in weights.items()}
    save_file(renamed, path / WEIGHTS_FILE, metadata={"format": "pt"})
    assert refusal_code(path, base_dir) == "adapter_base_mismatch"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused(make_adapter: MakeAdapter, base_dir: Path, bad: float) -> None:
    path = make_adapter()
    weights = load_file(path / WEIGHTS_FILE)
    name = sorted(weights)[-1]
    weights[name][0, 0] = bad
    save_file(weights, path / WEIGHTS_FILE, metadata={"format": "pt"})
    assert refusal_code(path, base_dir) == "adapter_weights_not_finite"


def test_non_finite_bf16_weights_are_refused(make_adapter: MakeAdapter, base_dir: Path) -> None:
    path = make_adapter()
    weights = {name: t.to(torch.bfloat16) for name, t in load_file(path / WEIGHTS_FILE).items()}
    save_file(weights, path / WEIGHTS_FILE, metadata={"format": "pt"})
    validate_adapter(str(path), base_dir=base_dir, max_bytes=MAX_BYTES)

    weights[sorted(weights)[0]][1, 2] = float("nan")
    save_file(weights, path / WEIGHTS_FILE, metadata={"format": "pt"})
    assert refusal_code(path, base_dir) == "adapter_weights_not_finite"


def test_adapter_above_the_size_limit_is_refused(make_adapter: MakeAdapter, base_dir: Path) -> None:
    path = make_adapter()
    size = (path / WEIGHTS_FILE).stat().st_size
    validate_adapter(str(path), base_dir=base_dir, max_bytes=size)
    assert refusal_code(path, base_dir, max_bytes=size - 1) == "adapter_too_large"


def test_nonexistent_directory_is_not_found(tmp_path: Path, base_dir: Path) -> None:
    assert refusal_code(tmp_path / "nowhere", base_dir) == "adapter_not_found"


def test_object_store_uri_is_refused(base_dir: Path) -> None:
    assert refusal_code("s3://bucket/adapters/upper", base_dir) == "adapter_uri_unsupported"


def test_shipped_demo_adapters_validate_against_the_demo_base() -> None:
    base, adapters = DEMO_BASE, DEMO_ADAPTERS
    assert base.is_dir(), f"{base} is missing; build it with `python -m workers.demo_model.build`"
    assert (adapters / "upper").is_dir(), f"{adapters / 'upper'} is missing"

    for adapter in sorted(p for p in adapters.iterdir() if p.is_dir()):
        info = validate_adapter(str(adapter), base_dir=base, max_bytes=MAX_BYTES)
        config = json.loads((adapter / CONFIG_FILE).read_text())
        assert info.r == max([config["r"], *config.get("rank_pattern", {}).values()]), adapter.name
        assert info.alpha == float(config["lora_alpha"]), adapter.name
        assert info.size_bytes == (adapter / WEIGHTS_FILE).stat().st_size, adapter.name


def test_a_gpt2_adapter_on_conv1d_modules_is_accepted_against_its_base(tmp_path: Path) -> None:
    """GPT-2 stores Conv1D weights as [in, out]; its LoRA pairs are still [r, in] / [out, r]."""
    from tests.workers.engine_models import build_base, load_base, save_adapter

    base = build_base("gpt2", tmp_path / "gpt2")
    adapter = save_adapter(load_base(base), tmp_path / "lora", seed=0, r=4, target_modules=["c_attn", "c_fc"])
    info = validate_adapter(str(adapter), base_dir=base, max_bytes=MAX_BYTES)
    assert info.r == 4
    tied = save_adapter(load_base(base), tmp_path / "head", seed=0, r=4, target_modules=["wte", "lm_head"])
    assert validate_adapter(str(tied), base_dir=base, max_bytes=MAX_BYTES).target_modules == ["lm_head", "wte"]
    with pytest.raises(InvalidAdapter) as refused:  # and a Llama adapter is still refused on it
        validate_adapter(str(adapter_dir("upper")), base_dir=base, max_bytes=MAX_BYTES)
    assert refused.value.code == "adapter_base_mismatch"


def test_a_home_directory_of_an_unknown_user_is_refused_with_a_code() -> None:
    from registry.artifacts.uri import local_path
    from registry.errors import InvalidAdapter

    with pytest.raises(InvalidAdapter) as refused:
        local_path("~0")  # found by the schema fuzzer: a 500 before
    assert refused.value.code == "adapter_uri_unsupported"


def test_a_recorded_uri_of_a_path_with_a_space_and_accent_reads_back_as_that_path(tmp_path: Path) -> None:
    from registry.artifacts.store import local_dir
    from registry.artifacts.uri import local_path, uri_of

    odd = tmp_path / "caps lock é"
    odd.mkdir()
    uri = uri_of(odd)
    assert uri.startswith("file://") and "%20" in uri and "%C3%A9" in uri
    assert local_path(uri) == odd.resolve()
    found = local_dir(uri, sha256="0" * 64, cache_dir=tmp_path / "cache")  # what the worker reads
    assert found.path == odd.resolve() and found.fetched_s is None


def test_a_uri_with_a_nul_character_is_refused_with_its_code_not_a_500() -> None:
    from registry.artifacts.uri import local_path

    with pytest.raises(InvalidAdapter) as err:
        local_path("\x00")  # found by the schema fuzzer
    assert err.value.code == "adapter_uri_unsupported"
