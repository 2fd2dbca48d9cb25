"""Train the shipped demo model from scratch: ``python -m workers.demo_model.build``.

A byte-level Llama-architecture base learns to copy its input; LoRA skills
trained on it learn the rules of :mod:`workers.demo_model.skills`. Everything
runs on the CPU with fixed seeds in a few minutes, so the committed files can
be rebuilt by anyone and nothing trains or downloads at install time.

Prompt framing lives in the tokenizer: its post-processor wraps every prompt as
``<s> text <sep>`` and the model answers ``output </s>``, so any client that
tokenises a plain prompt the usual way gets the trained behaviour.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from workers.demo_model import DEMO_DIR
from workers.demo_model.skills import SKILLS, expected, random_text

BASE_NAME = "loraq/demo-base"
SPECIALS = ["<pad>", "<s>", "</s>", "<sep>"]
PAD_ID, BOS_ID, EOS_ID, SEP_ID = range(4)
MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class SkillRecipe:
    """LoRA hyper-parameters per skill; deliberately varied so that mixed
    batches of the demo adapters exercise different ranks, alphas and rsLoRA."""

    r: int
    alpha: int
    rslora: bool = False


RECIPES: dict[str, SkillRecipe] = {
    "upper": SkillRecipe(r=8, alpha=16),
    "rot13": SkillRecipe(r=16, alpha=16),
    "swapcase": SkillRecipe(r=8, alpha=8, rslora=True),
    "novowel": SkillRecipe(r=12, alpha=24),
}


# The demo model is not a chat model: its chat template is the last message's text, so a chat
# request runs the same skill on it as a plain prompt would.
DEMO_CHAT_TEMPLATE = "{% for message in messages %}{% if loop.last %}{{ message['content'] }}{% endif %}{% endfor %}"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A 260-token byte-level tokenizer: four specials then the 256 bytes."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A <sep>", special_tokens=[("<s>", BOS_ID), ("<sep>", SEP_ID)]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        sep_token="<sep>",
        padding_side="left",
        model_max_length=256,
        chat_template=DEMO_CHAT_TEMPLATE,
    )


def base_config() -> LlamaConfig:
    # Grouped-query attention (4 query heads, 2 KV heads) on purpose: the
    # engine must handle k/v projections narrower than q.
    return LlamaConfig(
        vocab_size=len(SPECIALS) + 256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def make_batch(
    tok: PreTrainedTokenizerBase, rng: random.Random, skill: str | None, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``<s> x <sep> y </s>`` rows with loss only on ``y </s>``."""
    texts = [random_text(rng) for _ in range(size)]
    prompts = tok(texts)["input_ids"]
    targets = tok([expected(skill, t) for t in texts], add_special_tokens=False)["input_ids"]
    rows = [p + t + [EOS_ID] for p, t in zip(prompts, targets, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((size, width), PAD_ID, dtype=torch.long)
    labels = torch.full((size, width), -100, dtype=torch.long)
    mask = torch.zeros((size, width), dtype=torch.long)
    for i, (p, row) in enumerate(zip(prompts, rows, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, len(p) : len(row)] = torch.tensor(row[len(p) :])
        mask[i, : len(row)] = 1
    return ids, labels, mask


@torch.no_grad()
def exact_rate(model: torch.nn.Module, tok: PreTrainedTokenizerBase, skill: str | None, texts: list[str]) -> float:
    """Share of ``texts`` whose greedy answer equals the skill's rule exactly."""
    model.eval()
    enc = tok(texts, return_tensors="pt", padding=True)
    out = model.generate(  # type: ignore[operator]
        **enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=PAD_ID
    )
    answers = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train()
    hits = sum(a == expected(skill, t) for a, t in zip(answers, texts, strict=True))
    return hits / len(texts)


def train(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    *,
    skill: str | None,
    steps: int,
    lr: float,
    seed: int,
    target: float,
) -> float:
    """AdamW with warmup and cosine decay; stops early once held-out greedy
    accuracy reaches ``target``. Returns the last measured accuracy."""
    rng = random.Random(seed)
    held_out = [random_text(random.Random(10_000 + seed + i)) for i in range(128)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(s / steps * torch.pi)).item()))
        ),
    )
    model.train()
    started, acc = time.monotonic(), 0.0
    for step in range(1, steps + 1):
        ids, labels, mask = make_batch(tok, rng, skill, 64)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0:
            print(
                f"  [{skill or 'base'}] step {step}/{steps} loss {loss.item():.4f} ({time.monotonic() - started:.0f}s)",
                flush=True,
            )
        if step % 250 == 0:
            acc = exact_rate(model, tok, skill, held_out)
            print(f"  [{skill or 'base'}] held-out exact {acc:.1%}", flush=True)
            if acc >= target:
                break
    return acc


def build_base(out: Path, steps: int) -> None:
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = LlamaForCausalLM(base_config())
    acc = train(model, tok, skill=None, steps=steps, lr=3e-3, seed=1, target=0.995)
    model.config.name_or_path = BASE_NAME
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, do_sample=False).save_pretrained(  # type: ignore[no-untyped-call]
        out
    )
    print(f"base saved to {out} (held-out copy exact {acc:.1%})", flush=True)


def build_skill(base_dir: Path, out: Path, skill: str, steps: int) -> None:
    recipe = RECIPES[skill]
    torch.manual_seed(100 + sorted(RECIPES).index(skill))
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base.config.name_or_path = BASE_NAME
    config = LoraConfig(
        r=recipe.r,
        lora_alpha=recipe.alpha,
        use_rslora=recipe.rslora,
        target_modules="all-linear",
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    seed = 2 + sorted(RECIPES).index(skill)
    acc = train(model, tok, skill=skill, steps=steps, lr=1e-3, seed=seed, target=0.99)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out), safe_serialization=True)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = BASE_NAME
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    print(f"skill {skill} saved to {out} (held-out exact {acc:.1%})", flush=True)


def verify(root: Path) -> None:
    """Reload what was saved through PEFT and print each skill's accuracy."""
    tok = AutoTokenizer.from_pretrained(root / "base")
    base = LlamaForCausalLM.from_pretrained(root / "base", dtype=torch.float32)
    texts = [random_text(random.Random(900_000 + i)) for i in range(200)]
    print(f"base copy: {exact_rate(base, tok, None, texts):.1%}")
    for skill in SKILLS:
        if not (root / "adapters" / skill / "adapter_config.json").exists():
            print(f"{skill}: not built")
            continue
        model = PeftModel.from_pretrained(base, root / "adapters" / skill)
        print(f"{skill}: {exact_rate(model, tok, skill, texts):.1%}")
        base = model.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR)
    parser.add_argument("--base-steps", type=int, default=3000)
    parser.add_argument("--skill-steps", type=int, default=2000)
    parser.add_argument("--only", choices=["base", *SKILLS], action="append", help="rebuild only these parts")
    args = parser.parse_args()
    parts = args.only or ["base", *SKILLS]
    if "base" in parts:
        build_base(args.out / "base", args.base_steps)
    for skill in SKILLS:
        if skill in parts:
            build_skill(args.out / "base", args.out / "adapters" / skill, skill, args.skill_steps)
    verify(args.out)


if __name__ == "__main__":
    main()
