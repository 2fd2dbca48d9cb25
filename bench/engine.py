"""The engine alone: mixed-adapter throughput, adapter swaps, continuous batching.

Shape (issue 3): a random Llama, hidden 512, 8 layers, fp32 on CPU (or
``--device cuda --dtype bfloat16 --shape 0.5b`` on a GPU), batch 16, 32 new
tokens, r = 16 on every linear module, 8 distinct adapters. Every figure is
measured side by side in this one run and printed as one JSON line:

- ``mixed8_over_base``: our engine on a batch of 8 adapters ÷ the same engine
  on the same batch with no adapter (goal >= 0.9); the line also gives
  ``bytes_limit``, base weight bytes ÷ (base + the 8 adapters' LoRA bytes) a
  decode step reads: what a step bound by memory bandwidth (a GPU
  decoding) would reach. At this shape, r = 16 on every module of a
  512-wide model, the LoRA weights are ~40 % of the base's, so that limit
  is below the goal; a CPU's step is partly bound by compute instead, and
  ours has run above it there;
- ``mixed8_over_peft``: ours ÷ PEFT ``generate(adapter_names=...)`` on the
  same batch (goal >= 1.8); the line also gives PEFT ÷ the base and the
  ``ceiling`` it implies, base ÷ PEFT: ours ÷ PEFT if ours ran the mixed
  batch at the base model's own speed (where PEFT's loop over adapters
  costs little, as on a CPU, the goal is at or above it);
- ``swap_host_ms`` / ``swap_disk_ms``: one r = 16 adapter from host memory /
  from its directory on disk into a slot (goals <= 2 ms and <= 50 ms; the
  disk figure reads through the OS page cache);
- ``continuous_over_static``: 64 requests with output lengths spread over
  1-64 tokens, continuous batching ÷ static batches of 16 that run until
  their longest row is done, as ``generate`` does (goal >= 1.5); the line
  also gives the ratio over static batches that drop finished rows, and
  ``unpacked_over_static``, the same engine with packed steps off (each
  join a prefill forward of its own), the variants timed in turn;
- ``single_adapter_over_base``: the batch with every row on one adapter (the
  merged fast path: it merges after 8 forwards) ÷ the base alone (goal >= 0.97);
  the line also gives the same batch with merging off;
- ``merge_ms`` / ``unmerge_ms``: merging one r = 16 adapter into the base
  weights, and restoring them from the saved copy;
- ``dora_mixed_over_lora_mixed``: the mixed batch of 8 DoRA adapters ÷ the
  mixed batch of 8 plain LoRA adapters (same ranks and targets);
- ``int8_over_fp32`` and ``int8_weights_mb_over_fp32``: the mixed batch on an
  engine with ``quantize="int8"`` ÷ the same on float32, and its weights'
  MiB ÷ float32's (CPU only: int8 is torch's dynamic int8).

``--shape 7b-layers`` runs two of Llama-2-7B's decoder layers (4096 wide):
there the 8 adapters' LoRA weights are ~5 % of the base's and the bytes
limit ~0.95, the share a 7B-class model's r = 16 adapters have, where the
goal of 0.9 is reachable. ``--figures`` runs a few of the groups (``mixed``,
``swaps``, ``continuous``, ``single``, ``merge``, ``dora``, ``int8``), e.g.
``--shape 7b-layers --figures mixed`` on a CPU (a decode step there reads
1.6 GB of float32 weights).

Run by hand: ``python bench/engine.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from registry.artifacts.checks import file_sha256  # noqa: E402
from registry.schemas import SamplingParams  # noqa: E402
from workers.demo_model import DEMO_BASE  # noqa: E402
from workers.engine import EngineConfig, LoraEngine  # noqa: E402
from workers.engine.adapter_weights import read_adapter  # noqa: E402
from workers.engine.layers import MixedLoRA  # noqa: E402
from workers.generation import AdapterRef, GenRequest  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BYTE_VOCAB: dict[str, Any] = {  # the demo's byte vocabulary; no EOS, so every row runs its full length
    "vocab_size": 260,
    "eos_token_id": None,
    "bos_token_id": 1,
    "pad_token_id": 0,
}
SHAPES = {
    "small": lambda: LlamaConfig(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        **BYTE_VOCAB,
    ),
    "7b-layers": lambda: LlamaConfig(  # two of Llama-2-7B's decoder layers, with the demo's byte vocabulary
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=512,
        **BYTE_VOCAB,
    ),
    "0.5b": lambda: Qwen2Config(  # Qwen2-0.5B's shape with the demo's byte vocabulary
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        **BYTE_VOCAB,
    ),
}


def emit(figure: str, value: float, **extra: object) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 4), **extra}), flush=True)


def build(tmp: Path, shape: str, adapters: int, rank: int) -> tuple[Path, list[Path]]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(SHAPES[shape]())
    model.generation_config.eos_token_id = None  # every row runs its full length
    base_dir = tmp / "base"
    model.save_pretrained(base_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO_BASE / name, base_dir / name)
    return base_dir, build_adapters(tmp, base_dir, adapters, rank, dora=False)


def build_adapters(tmp: Path, base_dir: Path, adapters: int, rank: int, *, dora: bool) -> list[Path]:
    """Random adapters on every linear; DoRA ones get magnitudes computed on this base (PEFT's init)."""
    paths = []
    for i in range(adapters):
        torch.manual_seed(100 + i)
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False, use_dora=dora)
        base = (
            AutoModelForCausalLM.from_pretrained(base_dir)
            if dora
            else AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
        )
        peft_model = get_peft_model(base, cfg)
        path = tmp / f"{'dora' if dora else 'adapter'}{i}"
        peft_model.save_pretrained(path)
        paths.append(path)
    return paths


def refs_for(paths: list[Path], prefix: str) -> list[AdapterRef]:
    return [
        AdapterRef(
            key=f"{prefix}{i}", uri=str(p), sha256=file_sha256(p / "adapter_model.safetensors"), name=f"{prefix}{i}"
        )
        for i, p in enumerate(paths)
    ]


def best_of(repeats: int, fn: Callable[[], object], sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass
class Run:
    """One benchmark run's model, engine and knobs."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    base_dir: Path
    paths: list[Path]
    refs: list[AdapterRef]
    dora: list[AdapterRef]  # 8 DoRA adapters, built only when their figure runs
    engine: LoraEngine
    prompts: list[str]
    peft_s: float  # PEFT on the mixed batch, timed in a process of its own

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], object]) -> float:
        return best_of(self.args.repeats, fn, self.sync)

    @property
    def common(self) -> dict[str, object]:
        a = self.args
        return {"shape": a.shape, "device": a.device, "dtype": a.dtype, "rows": a.rows}


def mixed_vs_base_and_peft(run: Run) -> None:
    args, engine = run.args, run.engine
    sampling = SamplingParams(max_tokens=args.new_tokens)
    mixed = [
        GenRequest(job_id=str(i), prompt=p, sampling=sampling, adapter=run.refs[i % 8])
        for i, p in enumerate(run.prompts)
    ]
    base_only = [
        GenRequest(job_id=str(i), prompt=p, sampling=sampling, adapter=None) for i, p in enumerate(run.prompts)
    ]
    engine.generate(mixed)  # warm up: adapters into slots, allocator warm
    engine.generate(base_only)
    t_mixed = run.time(lambda: engine.generate(mixed))
    t_base = run.time(lambda: engine.generate(base_only))
    t_peft = run.peft_s
    tokens = args.rows * args.new_tokens
    base_bytes, lora_bytes = step_bytes(engine, run.refs[:8])
    limit = base_bytes / (base_bytes + lora_bytes)
    emit(
        "mixed8_over_base",
        t_base / t_mixed,
        ours_tok_s=round(tokens / t_mixed, 1),
        base_tok_s=round(tokens / t_base, 1),
        goal=0.9,
        bytes_limit=round(limit, 4),
        over_bytes_limit=round(t_base / t_mixed / limit, 4),
        lora_bytes_over_base=round(lora_bytes / base_bytes, 4),
        **run.common,
    )
    emit(
        "mixed8_over_peft",
        t_peft / t_mixed,
        peft_tok_s=round(tokens / t_peft, 1),
        peft_over_base=round(t_base / t_peft, 4),
        ceiling=round(t_peft / t_base, 4),
        goal=1.8,
        **run.common,
    )


def step_bytes(engine: LoraEngine, refs: list[AdapterRef]) -> tuple[int, int]:
    """Weight bytes one decode step reads: the wrapped base modules', and the LoRA weights the grouped
    products read for these adapters (each at the batch's widest rank, as the layers gather them).
    A step bound by memory bandwidth runs at most ``base / (base + lora)`` of the base's speed: the
    bound ``mixed8_over_base`` is shown against (a step bound by compute is not held to it)."""
    slots = {engine.adapters.slot_of(ref.key) for ref in refs} - {None}
    base = lora = 0
    for layer in engine.runner.layers.values():
        if not isinstance(layer, MixedLoRA):
            continue  # the input embedding is a gather: one row per token, not its whole weight
        size = layer.lora_a.element_size()
        base += layer.weight.numel() * layer.weight.element_size()
        ranks = [layer.filled[s] for s in slots if s in layer.filled]
        if ranks:
            rank = max(ranks)
            lora += len(slots) * rank * (layer.in_features + layer.out_features) * size
    return base, lora


def peft_seconds(args: argparse.Namespace, base_dir: Path, paths: list[Path], prompts: list[str]) -> float:
    """PEFT ``generate(adapter_names=...)`` on the same batch (its own tokenisation, left padding).

    Runs in a process of its own: two engines in one process share torch's
    OpenMP runtime, and whichever runs second ran about 1.5x slower here (see
    LoraEngine.__init__), which would flatter one side or the other."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    peft_base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device).eval()
    peft_model = PeftModel.from_pretrained(peft_base, paths[0], adapter_name="a0")
    for i, p in enumerate(paths[1:], start=1):
        peft_model.load_adapter(p, adapter_name=f"a{i}")
    peft_model.eval()
    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    names = [f"a{i % 8}" for i in range(args.rows)]

    @torch.inference_mode()
    def generate() -> None:
        peft_model.generate(
            **enc,
            adapter_names=names,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    generate()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return best_of(args.repeats, generate, sync)


def swaps(run: Run) -> None:
    """Host -> slot, and disk -> host -> slot, for one r = 16 adapter."""
    engine = run.engine
    host = read_adapter(run.paths[0], key="swap", sha256=None, base=engine.adapters.base, r_max=16, dtype=run.dtype)
    host_times, disk_times = [], []
    for _ in range(20):
        run.sync()
        start = time.perf_counter()
        engine.adapters.to_slot(1, host, name="swap")
        run.sync()
        host_times.append(time.perf_counter() - start)
    for _ in range(10):
        run.sync()
        start = time.perf_counter()
        fresh = read_adapter(
            run.paths[1],
            key="swap-disk",
            sha256=run.refs[1].sha256,
            base=engine.adapters.base,
            r_max=16,
            dtype=run.dtype,
        )
        engine.adapters.to_slot(2, fresh, name="swap-disk")
        run.sync()
        disk_times.append(time.perf_counter() - start)
    mib = round(host.nbytes / 2**20, 2)
    emit("swap_host_ms", 1000 * statistics.median(host_times), adapter_mib=mib, goal=2, **run.common)
    emit("swap_disk_ms", 1000 * statistics.median(disk_times), adapter_mib=mib, goal=50, **run.common)


def spread_requests(prompts: list[str], refs: list[AdapterRef]) -> list[GenRequest]:
    """64 requests, output lengths spread over 1-64 tokens, on the 8 adapters in turn."""
    rng = random.Random(1)
    lengths = [rng.randint(1, 64) for _ in range(64)]
    return [
        GenRequest(
            job_id=f"c{i}", prompt=prompts[i % len(prompts)], sampling=SamplingParams(max_tokens=n), adapter=refs[i % 8]
        )
        for i, n in enumerate(lengths)
    ]


def continuous_vs_static(run: Run) -> None:
    """Continuous batching ÷ static batches, with packed steps and without (the same engine, the
    runner's packing switched off), every variant timed in turn in each round (drift hits all alike)."""
    spread = spread_requests(run.prompts, run.refs)
    engine, rows = run.engine, run.args.rows
    runner = engine.runner

    def static(*, compacted: bool) -> None:
        """Batches of ``rows`` in arrival order; nothing joins a running batch. Classic static
        batching (transformers' ``generate``) computes every row until the batch's longest is
        done; ``compacted`` drops finished rows from the batch, which only helps where a step's
        cost grows with its rows (a CPU), not on a GPU."""
        for i in range(0, len(spread), rows):
            chunk = spread[i : i + rows]
            if not compacted:
                longest = SamplingParams(max_tokens=max(r.sampling.max_tokens for r in chunk))
                chunk = [
                    GenRequest(job_id=r.job_id, prompt=r.prompt, sampling=longest, adapter=r.adapter) for r in chunk
                ]
            engine.generate(chunk)

    def unpacked() -> None:
        packs, runner.packs = runner.packs, False  # each join a prefill forward of its own
        try:
            engine.generate(spread)
        finally:
            runner.packs = packs

    engine.generate(spread)  # warm up: adapters into slots
    variants: dict[str, Callable[[], object]] = {
        "continuous": lambda: engine.generate(spread),
        "unpacked": unpacked,
        "static": lambda: static(compacted=False),
        "compacted": lambda: static(compacted=True),
    }
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(run.args.repeats):
        for name, fn in variants.items():
            best[name] = min(best[name], best_of(1, fn, run.sync))
    emit(
        "continuous_over_static",
        best["static"] / best["continuous"],
        over_compacted_static=round(best["compacted"] / best["continuous"], 4),
        unpacked_over_static=round(best["static"] / best["unpacked"], 4),
        packed=runner.packs,
        requests=len(spread),
        tokens=sum(r.sampling.max_tokens for r in spread),
        goal=1.5,
        **run.common,
    )


def batch(run: Run, adapters: list[AdapterRef | None]) -> list[GenRequest]:
    """The run's prompts, row ``i`` on ``adapters[i % len(adapters)]``."""
    sampling = SamplingParams(max_tokens=run.args.new_tokens)
    return [
        GenRequest(job_id=str(i), prompt=p, sampling=sampling, adapter=adapters[i % len(adapters)])
        for i, p in enumerate(run.prompts)
    ]


def timed(run: Run, engine: LoraEngine, requests: list[GenRequest]) -> float:
    engine.generate(requests)  # warm up: adapters into slots (and merged, where the policy merges)
    return run.time(lambda: engine.generate(requests))


def single_adapter(run: Run) -> None:
    """Every row on one adapter: merged (steady state: it stays merged between calls) and not."""
    engine = run.engine
    t_base = timed(run, engine, batch(run, [None]))
    one = batch(run, [run.refs[0]])
    t_merged = timed(run, engine, one)
    policy, engine.adapters.merge_policy = engine.adapters.merge_policy, None
    with engine.scheduler.step_lock:
        engine.adapters.merger.unmerge()
    t_side = timed(run, engine, one)
    engine.adapters.merge_policy = policy
    emit(
        "single_adapter_over_base",
        t_base / t_merged,
        unmerged_over_base=round(t_base / t_side, 4),
        goal=0.97,
        **run.common,
    )


def merge_times(run: Run) -> None:
    """Merging one r = 16 adapter on every linear into the base weights, and restoring them."""
    adapters = run.engine.adapters
    slot = adapters.slot_of(run.refs[0].key)
    assert slot is not None
    merges: list[float] = []
    unmerges: list[float] = []
    with run.engine.scheduler.step_lock:
        adapters.merger.unmerge()
        for _ in range(10):
            merges.append(best_of(1, lambda: adapters.merger.merge(slot), run.sync))
            unmerges.append(best_of(1, adapters.merger.unmerge, run.sync))
    copy_mib = round(run.engine.budget.merge_copy / 2**20, 1)
    emit("merge_ms", 1000 * statistics.median(merges), rank=16, copy_mib=copy_mib, **run.common)
    emit("unmerge_ms", 1000 * statistics.median(unmerges), rank=16, copy_mib=copy_mib, **run.common)


def dora_vs_lora(run: Run) -> None:
    """The mixed batch of 8 DoRA adapters ÷ of 8 plain ones (same ranks and targets)."""
    t_lora = timed(run, run.engine, batch(run, list(run.refs[:8])))
    t_dora = timed(run, run.engine, batch(run, list(run.dora)))
    tokens = run.args.rows * run.args.new_tokens
    emit("dora_mixed_over_lora_mixed", t_lora / t_dora, dora_tok_s=round(tokens / t_dora, 1), **run.common)


def int8_vs_fp32(run: Run) -> None:
    """The mixed batch on an int8 base ÷ on the float32 one; weights' MiB likewise (CPU only)."""
    if run.device.type != "cpu" or run.dtype != torch.float32:
        print("int8 figures skipped: LORAQ_QUANTIZE=int8 is CPU float32 only", file=sys.stderr)
        return
    mixed = batch(run, list(run.refs[:8]))
    t_fp32 = timed(run, run.engine, mixed)
    int8 = LoraEngine(replace(run.engine.config, quantize="int8"))
    print(int8.describe(), file=sys.stderr)
    t_int8 = timed(run, int8, mixed)
    weights, fp32_weights = int8.budget.weights, run.engine.budget.weights
    int8.close()
    emit("int8_over_fp32", t_fp32 / t_int8, **run.common)
    emit(
        "int8_weights_mb_over_fp32",
        weights / fp32_weights,
        int8_mib=round(weights / 2**20, 1),
        fp32_mib=round(fp32_weights / 2**20, 1),
        **run.common,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--figures",
        default=",".join(FIGURES),
        help=f"comma-separated groups of figures to run, of {', '.join(FIGURES)} (default: all)",
    )
    args = parser.parse_args()
    figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    if unknown := set(figures) - set(FIGURES):
        parser.error(f"unknown figures {sorted(unknown)}: choose from {', '.join(FIGURES)}")
    with tempfile.TemporaryDirectory(prefix="loraq-bench-engine-") as tmp_name:
        print("building the random base and 8 adapters ...", file=sys.stderr)
        base_dir, paths = build(Path(tmp_name), args.shape, adapters=8, rank=16)
        refs = refs_for(paths, "a")
        dora = refs_for(build_adapters(Path(tmp_name), base_dir, 8, 16, dora=True), "d") if "dora" in figures else []
        rng = random.Random(0)
        prompts = ["".join(rng.choice("abcdefghij ") for _ in range(24)) for _ in range(args.rows)]
        peft_s = float("nan")
        if "mixed" in figures:
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                peft_s = pool.submit(peft_seconds, args, base_dir, paths, prompts).result()
        engine = LoraEngine(
            EngineConfig(
                base_model=base_dir,
                device=args.device,
                dtype=args.dtype,
                max_loras=8,
                max_rows=args.rows,
                max_lora_rank=16,
            )
        )
        print(engine.describe(), file=sys.stderr)
        run = Run(
            args=args,
            device=torch.device(args.device),
            dtype=getattr(torch, args.dtype),
            base_dir=base_dir,
            paths=paths,
            refs=refs,
            dora=dora,
            engine=engine,
            prompts=prompts,
            peft_s=peft_s,
        )
        for figure in figures:
            FIGURES[figure](run)
        engine.close()


FIGURES: dict[str, Callable[[Run], None]] = {
    "mixed": mixed_vs_base_and_peft,
    "swaps": swaps,
    "continuous": continuous_vs_static,
    "single": single_adapter,
    "merge": merge_times,
    "dora": dora_vs_lora,
    "int8": int8_vs_fp32,
}


if __name__ == "__main__":
    main()
