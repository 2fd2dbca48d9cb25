"""The shipped demo model does what it says, on strings training never saw.

Training draws from ``random.Random(seed)`` with seeds 1..5; these texts come
from other seeds and include hand-written phrases, and any text that the
training streams could have produced is ruled out by construction (different
generator state), so this measures generalisation, not recall.
"""

from __future__ import annotations

import random

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.demo_model import DEMO_DIR as DEMO
from workers.demo_model.skills import SKILLS, expected, random_text

UNSEEN = ["Hello World", "Zebra quartz 42", "Mixed batches never bleed", "ok"] + [
    random_text(random.Random(7_000_000 + i)) for i in range(96)
]


@pytest.fixture(scope="module")
def base() -> tuple[object, object]:
    tok = AutoTokenizer.from_pretrained(DEMO / "base")
    model = AutoModelForCausalLM.from_pretrained(DEMO / "base", dtype=torch.float32).eval()
    return tok, model


@torch.inference_mode()
def greedy(model: object, tok: object, texts: list[str]) -> list[str]:
    enc = tok(texts, return_tensors="pt", padding=True)  # type: ignore[operator]
    out = model.generate(**enc, max_new_tokens=64, do_sample=False)  # type: ignore[attr-defined]
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)  # type: ignore[attr-defined]


def exact(skill: str | None, texts: list[str], answers: list[str]) -> float:
    return sum(a == expected(skill, t) for a, t in zip(answers, texts, strict=True)) / len(texts)


def test_demo_files_are_small_and_safetensors_only() -> None:
    files = [p for p in DEMO.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".bin", ".pt")]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt")]
    assert {p.parent.name for p in DEMO.glob("adapters/*/adapter_model.safetensors")} == set(SKILLS)


def test_base_copies_unseen_text(base: tuple[object, object]) -> None:
    tok, model = base
    assert exact(None, UNSEEN, greedy(model, tok, UNSEEN)) >= 0.95


@pytest.mark.parametrize("skill", sorted(SKILLS))
def test_each_skill_follows_its_rule_on_unseen_text(base: tuple[object, object], skill: str) -> None:
    tok, model = base
    peft_model = PeftModel.from_pretrained(model, DEMO / "adapters" / skill).eval()
    try:
        rate = exact(skill, UNSEEN, greedy(peft_model, tok, UNSEEN))
    finally:
        peft_model.unload()
    assert rate >= 0.95, f"{skill}: {rate:.1%} exact"
