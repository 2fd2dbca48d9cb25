"""``LORAQ_QUANTIZE=int8``: one int8 base shared by every adapter, LoRA side paths in full precision.

Tolerance held: a row alone equals PEFT on the same int8 base (the same
quantized kernels; atol 1e-5). In a mixed batch, activations are quantized
with one scale per forward, so a row's logits move with its batch mates:
within 0.05 of PEFT's on the same int8 base (0.015 observed on these models,
whose logits span about ±0.5).
"""

from __future__ import annotations

import copy
import random
from functools import cache
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from registry.schemas import SamplingParams
from tests.workers.engine_models import FAMILIES, adapter_ref, build_base, load_base, peft_alone, save_adapter
from workers.demo_model import DEMO_DIR as DEMO
from workers.demo_model.skills import SKILLS, expected, random_text
from workers.engine import EngineConfig, LoraEngine
from workers.engine.quantize import int8_linear
from workers.engine.wrap import block_linears
from workers.errors import AdapterRefused
from workers.generation import AdapterRef, GenRequest


def request(job: str, prompt: str, adapter: AdapterRef | None, **sampling: int) -> GenRequest:
    return GenRequest(job_id=job, prompt=prompt, sampling=SamplingParams(**sampling), adapter=adapter)


def peft_int8(base: PreTrainedModel, adapter: Path | None) -> PreTrainedModel:
    """The oracle on the same int8 base: PEFT's model with every block linear's base quantized as ours is."""
    model = peft_alone(base, adapter) if adapter else copy.deepcopy(base)
    for name, module in block_linears(model).items():
        parent, _, child = name.rpartition(".")
        if adapter is None or child == "base_layer":
            setattr(model.get_submodule(parent), child, int8_linear(module))
    return model


@cache
def demo_int8() -> LoraEngine:
    return LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=16, max_loras=8, memory_budget_mb=256, quantize="int8")
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_rows_equal_peft_on_the_same_int8_base_alone_and_stay_close_in_a_mixed_batch(
    tmp_path: Path, family: str
) -> None:
    base_dir = build_base(family, tmp_path / "base")
    base = load_base(base_dir)
    eng = LoraEngine(
        EngineConfig(base_model=base_dir, max_loras=2, max_lora_rank=8, memory_budget_mb=64, quantize="int8")
    )
    paths = [save_adapter(base, tmp_path / f"a{i}", seed=i, r=4, target_modules=FAMILIES[family][1]) for i in (0, 1)]
    refs = [adapter_ref(p, f"{family}-{i}") for i, p in enumerate(paths)]
    prompts = ["hello there", "abc", "a much longer prompt", "xyz 123", "q", "mixed"]
    requests = [request(str(i), p, [None, *refs][i % 3]) for i, p in enumerate(prompts)]
    mixed = eng.score(requests)
    for r, together in zip(requests, mixed, strict=True):
        oracle = peft_int8(base, paths[refs.index(r.adapter)] if r.adapter else None)
        ids = torch.tensor([eng.runner.tokenizer(r.prompt)["input_ids"]])
        with torch.no_grad():
            want = oracle(input_ids=ids).logits[0]
        [alone] = eng.score([r])
        torch.testing.assert_close(alone, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together, want, atol=0.05, rtol=0)


def test_the_demo_skills_on_the_int8_base_still_follow_their_rule() -> None:
    rng = random.Random(9)
    skills: list[str | None] = [*sorted(SKILLS), None]
    work = [(skills[i % len(skills)], random_text(rng)) for i in range(40)]
    results = demo_int8().generate(
        [
            request(str(i), t, adapter_ref(DEMO / "adapters" / s, f"q-{s}") if s else None, max_tokens=64)
            for i, (s, t) in enumerate(work)
        ]
    )
    wrong = [(s, t, r.text) for (s, t), r in zip(work, results, strict=True) if r.text != expected(s, t)]
    assert len(wrong) <= 2, wrong  # >= 95 %, as the full-precision base


def test_the_memory_plan_prints_the_saving_of_int8_weights() -> None:
    plan = demo_int8().budget
    assert plan.quantized == "int8" and "int8;" in plan.describe() and "saves" in plan.describe()
    assert plan.weights < 0.5 * plan.full_weights
    assert plan.merge_copy == 0  # int8 layers are never merged
    assert not any(layer.mergeable for layer in demo_int8().runner.layers.values())


def test_dora_is_refused_on_an_int8_base_with_its_code(tmp_path: Path) -> None:
    base_dir = build_base("llama", tmp_path / "base")
    path = save_adapter(load_base(base_dir), tmp_path / "d", seed=1, r=4, target_modules=["q_proj"], use_dora=True)
    eng = LoraEngine(EngineConfig(base_model=base_dir, max_loras=1, memory_budget_mb=64, quantize="int8"))
    with pytest.raises(AdapterRefused) as info:
        eng.generate([request("d", "hi", adapter_ref(path, "dora-on-int8"))])
    assert info.value.code == "adapter_dora_unsupported"


def test_int8_outside_cpu_float32_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="LORAQ_QUANTIZE=int8"):
        LoraEngine(EngineConfig(base_model=DEMO / "base", dtype="bfloat16", memory_budget_mb=256, quantize="int8"))
