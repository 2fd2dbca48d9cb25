"""PEFT is the oracle: every row of a mixed batch equals PEFT running that row's adapter alone.

Property-based over model families (Llama, Qwen2, Mistral, GPT-2 with its
Conv1D and tied LM head), ranks, alphas, rsLoRA, DoRA, target subsets
(the input embedding and the LM head included), ``layers_to_transform`` and
``rank_pattern``/``alpha_pattern``; real tensors in fp32, small shapes.
"""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from registry.schemas import SamplingParams
from tests.workers.engine_models import (
    EDGE_TARGETS,
    FAMILIES,
    adapter_ref,
    build_base,
    load_base,
    peft_alone,
    save_adapter,
)
from workers.engine import EngineConfig, LoraEngine
from workers.engine.layers import LoRABatch, MixedLoRA
from workers.errors import AdapterRefused
from workers.generation import AdapterRef, GenRequest

_ROOT = Path(tempfile.mkdtemp(prefix="loraq-engine-models-"))


@cache
def base_dir(family: str) -> Path:
    return build_base(family, _ROOT / family)


@cache
def engine(family: str, *, embedding_lora: bool = True) -> LoraEngine:
    return LoraEngine(
        EngineConfig(
            base_model=base_dir(family),
            max_loras=3,
            max_rows=8,
            max_lora_rank=16,
            memory_budget_mb=64,
            embedding_lora=embedding_lora,
        )
    )


@st.composite
def lora_configs(draw: st.DrawFn, family: str) -> dict[str, object]:
    targets = FAMILIES[family][1]
    chosen = draw(st.lists(st.sampled_from(targets), min_size=1, max_size=len(targets), unique=True))
    edges = EDGE_TARGETS[family]
    chosen += draw(st.lists(st.sampled_from(edges), max_size=len(edges), unique=True))
    config: dict[str, object] = {
        "r": draw(st.sampled_from([1, 2, 4, 8])),
        "lora_alpha": draw(st.sampled_from([1, 4, 8, 16, 32])),
        "use_rslora": draw(st.booleans()),
        "use_dora": draw(st.booleans()),
        "target_modules": chosen,
    }
    if draw(st.booleans()):
        config["layers_to_transform"] = draw(st.sampled_from([[0], [1]]))
    if draw(st.booleans()):
        module = draw(st.sampled_from(chosen))
        config["rank_pattern"] = {module: draw(st.sampled_from([2, 16]))}
        config["alpha_pattern"] = {module: draw(st.sampled_from([3, 24]))}
    return config


def request(job: str, prompt: str, adapter: AdapterRef | None) -> GenRequest:
    return GenRequest(job_id=job, prompt=prompt, sampling=SamplingParams(), adapter=adapter)


PROMPTS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ABC0123.,", min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), family=st.sampled_from(sorted(FAMILIES)))
def test_every_row_of_a_mixed_batch_matches_peft_for_its_adapter_alone(data: st.DataObject, family: str) -> None:
    eng = engine(family)
    base = load_base(base_dir(family))
    configs = data.draw(st.lists(lora_configs(family), min_size=1, max_size=3))
    with tempfile.TemporaryDirectory() as tmp:
        paths = [
            save_adapter(base, Path(tmp) / f"a{i}", seed=data.draw(st.integers(0, 999)), **c)
            for i, c in enumerate(configs)
        ]
        refs = [adapter_ref(p, f"{family}-{tmp}-{i}") for i, p in enumerate(paths)]
        rows = data.draw(
            st.lists(
                st.tuples(
                    st.integers(0, len(refs)),  # 0: the base model
                    PROMPTS,
                ),
                min_size=1,
                max_size=6,
            )
        )
        requests = [request(str(i), text, refs[which - 1] if which else None) for i, (which, text) in enumerate(rows)]
        ours = eng.score(requests)
        for (which, _), req, got in zip(rows, requests, ours, strict=True):
            oracle = peft_alone(base, paths[which - 1] if which else None)
            ids = torch.tensor([eng.runner.tokenizer(req.prompt)["input_ids"]])
            with torch.no_grad():
                want = oracle(input_ids=ids).logits[0]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_slot_zero_rows_equal_the_base_model_exactly_when_no_adapter_is_in_the_batch() -> None:
    eng = engine("llama")
    base = load_base(base_dir("llama"))
    req = request("b", "base only", None)
    [got] = eng.score([req])
    ids = torch.tensor([eng.runner.tokenizer(req.prompt)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(got, base(input_ids=ids).logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("family", "lora", "code", "embedding_lora"),
    [
        ("llama", {"r": 32, "target_modules": ["q_proj"]}, "adapter_rank_too_large", True),
        ("gpt2", {"r": 4, "target_modules": ["c_attn", "wpe"]}, "adapter_module_unsupported", True),  # positions
        ("llama", {"r": 4, "target_modules": ["q_proj", "lm_head"]}, "adapter_module_unsupported", False),
        (
            "llama",
            {"r": 4, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
            "adapter_modules_to_save_unsupported",
            True,
        ),
    ],
)
def test_what_a_mixed_batch_cannot_serve_is_refused_at_load_with_a_code(
    tmp_path: Path, family: str, lora: dict[str, object], code: str, embedding_lora: bool
) -> None:
    eng = engine(family, embedding_lora=embedding_lora)
    path = save_adapter(load_base(base_dir(family)), tmp_path / "a", seed=1, lora_alpha=8, **lora)
    req = request("x", "hi", adapter_ref(path, f"refused-{code}"))
    with pytest.raises(AdapterRefused) as info:
        eng.generate([req])
    assert info.value.code == code
    assert "refused-" + code not in eng.resident_adapters()


def test_an_adapter_of_another_base_is_refused(tmp_path: Path) -> None:
    gpt2 = save_adapter(load_base(base_dir("gpt2")), tmp_path / "g", seed=2, r=4, target_modules=["c_attn"])
    with pytest.raises(AdapterRefused) as info:
        engine("llama").generate([request("x", "hi", adapter_ref(gpt2, "gpt2-on-llama"))])
    assert info.value.code == "adapter_base_mismatch"


def test_peft_default_saved_copies_of_the_embedding_and_head_are_served_only_if_they_equal_the_base(
    tmp_path: Path,
) -> None:
    """``save_pretrained`` saves the base weights of a targeted embedding and LM head by default."""
    eng, base = engine("qwen2"), load_base(base_dir("qwen2"))
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "embed_tokens", "lm_head"], "use_dora": True}
    path = save_adapter(base, tmp_path / "a", seed=3, save_embedding_layers=True, **lora)
    req = request("c", "saved copies", adapter_ref(path, "with-copies"))
    [got] = eng.score([req, request("b", "base row", None)])[:1]
    ids = torch.tensor([eng.runner.tokenizer(req.prompt)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(got, peft_alone(base, path)(input_ids=ids).logits[0], atol=1e-4, rtol=1e-4)

    weights = load_file(path / "adapter_model.safetensors")
    copy = next(name for name in weights if "base_layer" in name)
    weights[copy] = weights[copy] + 0.01  # another base's embedding
    save_file(weights, path / "adapter_model.safetensors")
    with pytest.raises(AdapterRefused) as info:
        eng.generate([request("x", "hi", adapter_ref(path, "another-copy"))])
    assert info.value.code == "adapter_base_mismatch"


def test_a_weight_pool_holding_adapters_no_row_uses_changes_no_rows_output() -> None:
    """The layers may hold more adapters gathered than a forward uses (the weight pool); their groups
    are padding, and every row's output is what the exact set gives, DoRA and base rows included."""
    torch.manual_seed(0)
    batch = LoRABatch()
    layer = MixedLoRA(torch.nn.Linear(6, 5), slots=4, r_max=2, batch=batch)
    for slot in (1, 2, 3):
        layer.load_slot(slot, torch.randn(6, 2), torch.randn(2, 5))
    layer.set_dora(3, torch.rand(5) + 0.5)
    x = torch.randn(4, 2, 6)
    cpu = torch.device("cpu")
    for slots in ([2, 0, 2, 3], [3, 3, 3, 3], [0, 0, 0, 0]):
        batch.set(slots, cpu, rank=2)
        exact = layer(x)
        batch.set(slots, cpu, rank=2, pool=(1, 2, 3))
        torch.testing.assert_close(layer(x), exact)
    with pytest.raises(ValueError, match="lacks adapters"):
        batch.set([1, 2], cpu, rank=2, pool=(2, 3))


def test_a_packed_forward_groups_its_decode_tokens_and_its_prompts_apart_and_pads_no_prompt_to_every_adapter() -> None:
    """Decode tokens of three adapters, then two prompts of adapter 1 (six tokens): the prompts are a run
    of groups of their own, over adapter 1 alone, and every token gets its own adapter's delta."""
    torch.manual_seed(1)
    batch = LoRABatch()
    layer = MixedLoRA(torch.nn.Linear(6, 5), slots=4, r_max=2, batch=batch)
    for slot in (1, 2, 3):
        layer.load_slot(slot, torch.randn(6, 2), torch.randn(2, 5))
    batch.set([1, 2, 3, 0, 1, 1], torch.device("cpu"), rank=2, pool=(1, 2, 3), tokens=[1, 1, 1, 1, 3, 3])
    assert batch.packed is not None
    decode, prompts = batch.packed.parts
    assert (decode.start, decode.stop, decode.live) == (0, 4, None)
    assert (prompts.start, prompts.stop, prompts.groups, prompts.per_group) == (4, 10, 1, 6)
    assert prompts.live is not None and prompts.live.tolist() == [0]  # adapter 1's place in the pool
    x = torch.randn(1, 10, 6)
    token_slots = [1, 2, 3, 0, 1, 1, 1, 1, 1, 1]
    want = torch.stack(
        [
            layer.base(x[0, t]) + x[0, t] @ layer.lora_a[s, :, :2] @ layer.lora_b[s, :2]
            for t, s in enumerate(token_slots)
        ]
    )
    torch.testing.assert_close(layer(x)[0], want)
    head_input = torch.randn(1, 6, 6)  # the LM head's one vector per row picks the row map
    want_head = torch.stack(
        [
            layer.base(head_input[0, i]) + head_input[0, i] @ layer.lora_a[s, :, :2] @ layer.lora_b[s, :2]
            for i, s in enumerate([1, 2, 3, 0, 1, 1])
        ]
    )
    torch.testing.assert_close(layer(head_input)[0], want_head)
