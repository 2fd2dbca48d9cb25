"""The merged fast path: exact unmerges, and merged rows still equal PEFT's."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

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
from workers.engine import merge as merge_module
from workers.engine.merge import Merger
from workers.generation import AdapterRef, GenRequest

LLAMA_BLOCKS = FAMILIES["llama"][1]


def request(job: str, prompt: str, adapter: AdapterRef | None, max_tokens: int = 24) -> GenRequest:
    return GenRequest(job_id=job, prompt=prompt, sampling=SamplingParams(max_tokens=max_tokens), adapter=adapter)


def adapters(family: str, tmp: Path) -> tuple[Path, list[Path]]:
    """A base, a plain LoRA on every block linear, and a DoRA also on the embedding and the LM head."""
    base_dir = build_base(family, tmp / "base", seed=5)
    base = load_base(base_dir)
    blocks, edges = FAMILIES[family][1], EDGE_TARGETS[family]
    plain = save_adapter(base, tmp / "plain", seed=1, r=8, lora_alpha=16, target_modules=blocks)
    dora = save_adapter(base, tmp / "dora", seed=2, r=4, lora_alpha=8, target_modules=blocks + edges, use_dora=True)
    return base_dir, [plain, dora]


def peft_greedy(family_base: Path, adapter: Path, eng: LoraEngine, prompt: str, max_tokens: int) -> str:
    model = peft_alone(load_base(family_base), adapter)
    ids = torch.tensor([eng.runner.tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    new = out[0, ids.shape[1] :].tolist()
    eos = new.index(2) if 2 in new else len(new)
    return str(eng.runner.tokenizer.decode(new[:eos], skip_special_tokens=True))


def spy_merges(eng: LoraEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The slot of every merge, and 0 for every unmerge, in order."""
    events: list[int] = []
    merger = eng.adapters.merger
    real_merge, real_unmerge = merger.merge, merger.unmerge

    def merge(slot: int) -> None:
        events.append(slot)
        real_merge(slot)

    def unmerge() -> None:
        events.append(0)
        real_unmerge()

    monkeypatch.setattr(merger, "merge", merge)
    monkeypatch.setattr(merger, "unmerge", unmerge)
    return events


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merge_then_unmerge_leaves_the_base_weights_bit_identical(tmp_path: Path, dtype: str) -> None:
    base_dir, paths = adapters("llama", tmp_path)
    eng = LoraEngine(EngineConfig(base_model=base_dir, dtype=dtype, max_loras=2, max_lora_rank=8, memory_budget_mb=64))  # type: ignore[arg-type]
    refs = [adapter_ref(p, f"k{i}") for i, p in enumerate(paths)]
    eng.score([request(str(i), "load", r) for i, r in enumerate(refs)])  # both adapters in slots
    before = {name: t.clone() for name, t in eng.runner.model.state_dict().items()}
    merger = eng.adapters.merger
    with eng.scheduler.step_lock:
        merger.unmerge()
        for r in refs:
            slot = eng.adapters.slot_of(r.key)
            assert slot is not None
            merger.merge(slot)
            changed = [n for n, t in eng.runner.model.state_dict().items() if not torch.equal(t, before[n])]
            assert len(changed) == len(LLAMA_BLOCKS) * 2  # every block linear of both layers, nothing else
            merger.unmerge()
            after = eng.runner.model.state_dict()
            assert all(torch.equal(after[n], t) for n, t in before.items())


def test_only_block_linears_whose_weight_is_not_shared_are_mergeable(tmp_path: Path) -> None:
    """GPT-2 ties its LM head to the input embedding: merging into one would change the other."""
    eng = LoraEngine(EngineConfig(base_model=build_base("gpt2", tmp_path / "g"), max_loras=1, memory_budget_mb=64))
    mergeable = {name for name, layer in eng.runner.layers.items() if layer.mergeable}
    assert mergeable == {n for n in eng.runner.layers if ".h." in n}
    assert {"lm_head", "transformer.wte"} <= set(eng.runner.layers)
    assert len(Merger(eng.runner.layers.values()).layers) == len(mergeable)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
def test_rows_of_one_adapter_run_merged_and_equal_peft_for_that_adapter_alone(
    tmp_path: Path, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir, paths = adapters(family, tmp_path)
    eng = LoraEngine(EngineConfig(base_model=base_dir, max_rows=4, max_loras=2, max_lora_rank=8, memory_budget_mb=64))
    merged = spy_merges(eng, monkeypatch)
    for i, path in enumerate(paths):
        adapter = adapter_ref(path, f"{family}-{i}")
        prompts = ["merge this one", "and that"]
        results = eng.generate([request(f"{i}{j}", p, adapter) for j, p in enumerate(prompts)])
        assert merged and merged[-1] == eng.adapters.slot_of(adapter.key), "the rows did not run merged"
        for prompt, got in zip(prompts, results, strict=True):
            assert got.text == peft_greedy(base_dir, path, eng, prompt, 24), (family, path.name, prompt)


def test_a_row_of_another_adapter_joining_unmerges_first_and_every_row_still_equals_peft(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir, paths = adapters("llama", tmp_path)
    eng = LoraEngine(EngineConfig(base_model=base_dir, max_rows=4, max_loras=2, max_lora_rank=8, memory_budget_mb=64))
    plain, dora = adapter_ref(paths[0], "plain"), adapter_ref(paths[1], "dora")
    eng.score([request("warm", "warm", dora)])  # in a slot, so it joins without waiting for a load
    merged = spy_merges(eng, monkeypatch)
    out: list[object] = []
    long_row = threading.Thread(target=lambda: out.extend(eng.generate([request("long", "a long one", plain, 100)])))
    long_row.start()
    deadline = time.monotonic() + 30
    while not merged and time.monotonic() < deadline:
        time.sleep(0.001)
    assert merged, "the single-adapter row was never merged"
    [joined] = eng.generate([request("join", "joins later", dora)])
    long_row.join(60)
    plain_slot = eng.adapters.slot_of("plain")
    assert plain_slot is not None and 0 in merged[merged.index(plain_slot) :]  # unmerged when the other joined
    assert joined.text == peft_greedy(base_dir, paths[1], eng, "joins later", 24)
    assert out[0].text == peft_greedy(base_dir, paths[0], eng, "a long one", 100)  # type: ignore[attr-defined]


def test_a_merge_that_fails_leaves_the_base_intact_and_the_rows_on_the_side_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir, paths = adapters("llama", tmp_path)
    eng = LoraEngine(EngineConfig(base_model=base_dir, max_rows=4, max_loras=2, max_lora_rank=8, memory_budget_mb=64))
    before = {name: t.clone() for name, t in eng.runner.model.named_parameters()}  # the base's weights
    calls: list[int] = []

    def out_of_memory(layer: object, slot: int) -> None:
        calls.append(slot)
        if len(calls) == 3:  # two layers merged, the third fails: both are restored
            raise RuntimeError("CUDA out of memory")
        real_merge_into(layer, slot)  # type: ignore[arg-type]

    real_merge_into = merge_module.merge_into
    monkeypatch.setattr(merge_module, "merge_into", out_of_memory)
    [got] = eng.generate([request("f", "merge fails", adapter_ref(paths[1], "dora"))])
    assert len(calls) == 3 and eng.adapters.merger.slot == 0
    assert got.text == peft_greedy(base_dir, paths[1], eng, "merge fails", 24)
    after = dict(eng.runner.model.named_parameters())
    assert all(torch.equal(after[n], t) for n, t in before.items())
