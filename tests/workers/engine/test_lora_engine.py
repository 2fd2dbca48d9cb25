"""The loraq engine generates what PEFT generates, row by row, with continuous batching and tiers."""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path

import fsspec
import pytest
import torch
from transformers import PreTrainedModel

from registry.schemas import FinishReason, SamplingParams
from tests.workers.engine_models import EDGE_TARGETS, build_base, load_base, peft_alone, save_adapter
from workers.contract.streams import Delta
from workers.demo_model import DEMO_DIR as DEMO
from workers.demo_model.skills import SKILLS, expected, random_text
from workers.engine import EngineConfig, LoraEngine
from workers.engine import adapters as adapters_module
from workers.engine import scheduler as scheduler_module
from workers.engine.memory import BudgetTooSmall
from workers.engine.row import Row
from workers.errors import AdapterLoadFailed, PromptTooLong
from workers.generation import AdapterRef, GenRequest


def skill_ref(skill: str, *, key: str | None = None, uri: str | None = None) -> AdapterRef:
    path = DEMO / "adapters" / skill
    digest = hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()
    return AdapterRef(key=key or f"k-{skill}", uri=uri or str(path), sha256=digest, name=skill)


def req(job: str, prompt: str, adapter: AdapterRef | None, **sampling: object) -> GenRequest:
    return GenRequest(job_id=job, prompt=prompt, sampling=SamplingParams(**sampling), adapter=adapter)  # type: ignore[arg-type]


@cache
def demo_engine(max_rows: int = 16, max_loras: int = 8) -> LoraEngine:
    return LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=max_rows, max_loras=max_loras, memory_budget_mb=256)
    )


def test_the_demo_skills_in_one_mixed_batch_each_follow_their_rule() -> None:
    rng = random.Random(5)
    skills: list[str | None] = [*sorted(SKILLS), None]
    work = [(skills[i % len(skills)], random_text(rng)) for i in range(20)]
    requests = [req(str(i), t, skill_ref(s) if s else None, max_tokens=64) for i, (s, t) in enumerate(work)]
    results = demo_engine().generate(requests)
    wrong = [(s, t, r.text) for (s, t), r in zip(work, results, strict=True) if r.text != expected(s, t)]
    assert len(wrong) <= 1, wrong  # the model is >= 95 % exact per skill: one miss in 20 at most
    assert all(r.finish_reason is FinishReason.STOP for r in results)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
def test_greedy_generation_is_token_identical_to_peft_generate_per_adapter(
    tmp_path: Path, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir = build_base(family, tmp_path / "base", seed=3)
    base = load_base(base_dir)
    targets = {"gpt2": ["c_attn", "c_fc"]}.get(family, ["q_proj", "v_proj", "down_proj"])
    dora = {"use_dora": True, "target_modules": targets + EDGE_TARGETS[family]}  # on the embedding and LM head too
    paths = [
        save_adapter(base, tmp_path / "a0", seed=0, r=2, lora_alpha=4, target_modules=targets),
        save_adapter(base, tmp_path / "a1", seed=1, r=8, lora_alpha=16, **dora),
    ]
    refs = [AdapterRef(key=f"a{i}", uri=str(p), sha256=_sha(p), name=f"a{i}") for i, p in enumerate(paths)]
    eng = LoraEngine(EngineConfig(base_model=base_dir, max_rows=4, max_loras=2, max_lora_rank=8, memory_budget_mb=64))
    prompts = ["hello there", "abc", "a much longer prompt here", "xyz 123", "q", "mixed batch"]
    requests = [req(str(i), p, [None, *refs][i % 3], max_tokens=6 + 3 * i) for i, p in enumerate(prompts)]
    packed = packed_steps(eng, monkeypatch)
    ours = eng.generate(requests)
    assert packed, "rows joined running rows in packed steps"
    for r, got in zip(requests, ours, strict=True):
        model = peft_alone(base, paths[refs.index(r.adapter)] if r.adapter else None)
        assert (got.text, got.completion_tokens) == greedy_alone(eng, model, r), (family, r.prompt)


def packed_steps(eng: LoraEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the joining rows of each packed step the engine runs (it still runs them)."""
    joins: list[int] = []
    run = eng.runner.packed

    def packed(running: Sequence[Row], joining: Sequence[Row]) -> None:
        joins.append(len(joining))
        run(running, joining)

    monkeypatch.setattr(eng.runner, "packed", packed)
    return joins


def greedy_alone(eng: LoraEngine, model: PreTrainedModel, r: GenRequest) -> tuple[str, int]:
    """The oracle's text and completion tokens for ``r`` alone: transformers' greedy ``generate``."""
    ids = torch.tensor([eng.runner.tokenizer(r.prompt)["input_ids"]])
    generate: Callable[..., torch.Tensor] = model.generate  # type: ignore[assignment]  # typed as a Tensor
    with torch.no_grad():
        out = generate(input_ids=ids, max_new_tokens=r.sampling.max_tokens, do_sample=False, pad_token_id=0)
    new: list[int] = out[0, ids.shape[1] :].tolist()
    eos = new.index(2) if 2 in new else len(new)
    return eng.runner.decode_text(new[:eos]), min(len(new), eos + 1)


def _sha(path: Path) -> str:
    return hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("llama", {}),
        (
            "qwen2",
            {"use_sliding_window": True, "sliding_window": 6, "layer_types": ["full_attention", "sliding_attention"]},
        ),
        ("mistral", {"sliding_window": 6}),
        ("gpt2", {}),
    ],
)
def test_rows_joining_and_leaving_mid_decode_get_the_tokens_each_gets_alone(
    tmp_path: Path, family: str, overrides: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two places, five rows of different lengths: each row joins in the middle of another's decoding, and
    leaves while another goes on (sliding windows shorter than the rows, where the family has them)."""
    base_dir = build_base(family, tmp_path / "base", seed=5, **overrides)
    steps: list[frozenset[str]] = []
    eng = LoraEngine(
        EngineConfig(base_model=base_dir, max_rows=2, max_loras=1, memory_budget_mb=64),
        cancelled=lambda ids: steps.append(frozenset(ids)) or set(),  # type: ignore[func-returns-value]
    )
    prompts = ["a longer first prompt", "hi", "third one here", "x", "the fifth and last prompt"]
    requests = [
        req(str(i), p, None, max_tokens=n) for i, (p, n) in enumerate(zip(prompts, [3, 20, 9, 14, 6], strict=True))
    ]
    packed = packed_steps(eng, monkeypatch)
    together = eng.generate(requests)
    assert len(packed) >= 3  # rows joined running rows in the decode step's forward
    base = load_base(base_dir)
    assert [(r.text, r.completion_tokens) for r in together] == [greedy_alone(eng, base, r) for r in requests]
    assert len({s for s in steps if len(s) == 2}) >= 3, steps  # rows shared steps with different partners


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("llama", {}),
        (
            "qwen2",
            {"use_sliding_window": True, "sliding_window": 6, "layer_types": ["full_attention", "sliding_attention"]},
        ),
        ("gpt2", {}),
    ],
)
def test_several_rows_joining_one_packed_step_with_prompts_of_different_lengths_get_what_each_gets_alone(
    tmp_path: Path, family: str, overrides: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four places: three rows end at the same step while one runs on, so three waiting rows, their
    prompts 1 to 25 tokens, join in one packed step (padding, the prompt mask and their order all count)."""
    base_dir = build_base(family, tmp_path / "base", seed=7, **overrides)
    eng = LoraEngine(EngineConfig(base_model=base_dir, max_rows=4, max_loras=1, memory_budget_mb=64))
    first = [
        req(f"f{i}", p, None, max_tokens=n) for i, (p, n) in enumerate([("ab", 2), ("cd", 2), ("ef", 2), ("gh", 12)])
    ]
    waiting = [req(f"w{i}", p, None, max_tokens=5) for i, p in enumerate(["x", "a prompt of 25 characters", "mid one"])]
    packed = packed_steps(eng, monkeypatch)
    together = eng.generate(first + waiting)
    assert max(packed) == 3, packed
    base = load_base(base_dir)
    assert [(r.text, r.completion_tokens) for r in together] == [greedy_alone(eng, base, r) for r in first + waiting]


def test_the_kv_cache_is_allocated_once_at_its_planned_size_and_never_grows() -> None:
    eng = LoraEngine(EngineConfig(base_model=DEMO / "base", max_rows=3, max_loras=2, memory_budget_mb=256))
    plan, kv = eng.budget, eng.runner.kv
    assert kv.nbytes == plan.kv_rows * plan.row_tokens * plan.kv_bytes_per_token
    assert (plan.kv_rows, plan.row_tokens) == (3, eng.runner.max_positions)
    tensors = [t for layer in kv.layers for t in (layer.keys, layer.values)]
    before = [(t.data_ptr(), t.shape) for t in tensors]
    rng = random.Random(8)
    eng.generate([req(str(i), random_text(rng), skill_ref("upper"), max_tokens=rng.randint(1, 60)) for i in range(9)])
    assert [(t.data_ptr(), t.shape) for t in tensors] == before
    assert [(t.data_ptr(), t.shape) for layer in kv.layers for t in (layer.keys, layer.values)] == before


def test_a_prompt_longer_than_a_kv_slot_is_refused_and_a_row_stops_at_the_end_of_its_slot() -> None:
    eng = demo_engine()
    slot = eng.budget.row_tokens  # the model's positions
    with pytest.raises(PromptTooLong, match=f"prompt of {slot + 2} tokens leaves no room in a row's {slot}"):
        eng.generate([req("long", "x" * slot, None)])  # the demo tokenizer adds BOS and EOS
    [edge] = eng.generate([req("edge", "y" * (slot - 10), None, max_tokens=64)])
    assert edge.prompt_tokens + edge.completion_tokens == slot
    assert edge.finish_reason is FinishReason.LENGTH


def test_max_row_tokens_shortens_every_slot_so_more_rows_fit_the_same_budget() -> None:
    """A long-context model's full-length slots would take the budget for a few rows: a shorter slot
    (vLLM's max_model_len) runs more at once, refuses what does not fit it, and caps what may grow."""
    budget = 12  # MiB: room for 5 full-length demo slots (256 tokens), not for sixteen
    full = LoraEngine(EngineConfig(base_model=DEMO / "base", max_rows=16, max_loras=1, memory_budget_mb=budget))
    short = LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=16, max_loras=1, memory_budget_mb=budget, max_row_tokens=64)
    )
    assert short.budget.row_tokens == 64 < full.budget.row_tokens == full.runner.max_positions
    assert full.budget.kv_rows < short.budget.kv_rows
    assert short.runner.kv.nbytes == short.budget.kv_rows * 64 * short.budget.kv_bytes_per_token
    with pytest.raises(PromptTooLong, match="leaves no room in a row's 64 tokens"):
        short.generate([req("long", "x" * 70, None)])
    [capped] = short.generate([req("capped", "y" * 40, skill_ref("upper"), max_tokens=200)])  # copies 40
    assert capped.prompt_tokens + capped.completion_tokens == 64 and capped.finish_reason is FinishReason.LENGTH


def test_continuous_batching_gives_each_row_what_it_gets_alone() -> None:
    """Ten rows through three places: rows join and leave at step boundaries; no row or adapter bleed."""
    eng = demo_engine(max_rows=3, max_loras=3)
    rng = random.Random(11)
    skills = [None, *sorted(SKILLS)]
    requests = []
    for i in range(10):
        skill = skills[i % len(skills)]
        sampling: dict[str, object] = {"max_tokens": rng.randint(1, 40)}
        if i % 4 == 3:
            sampling.update(temperature=1.2, top_p=0.9, top_k=20, seed=100 + i)
        requests.append(req(str(i), random_text(rng), skill_ref(skill) if skill else None, **sampling))
    together = eng.generate(requests)
    alone = [eng.generate([r])[0] for r in requests]
    assert together == alone


def test_stop_strings_and_max_tokens_end_rows_with_their_finish_reason() -> None:
    eng = demo_engine()
    upper = skill_ref("upper")
    stop, length, natural = eng.generate(
        [
            req("s", "hello world", upper, stop=["WOR"]),
            req("l", "hello world", upper, max_tokens=3),
            req("n", "hello world", upper),
        ]
    )
    assert (stop.text, stop.finish_reason) == ("HELLO ", FinishReason.STOP)
    assert (length.text, length.finish_reason, length.completion_tokens) == ("HEL", FinishReason.LENGTH, 3)
    assert (natural.text, natural.finish_reason) == ("HELLO WORLD", FinishReason.STOP)


def test_seeded_sampling_reproduces_and_top_k_one_is_greedy() -> None:
    eng = demo_engine()
    rot = skill_ref("rot13")
    seeded = req("a", "sampling here", rot, temperature=1.5, seed=7, max_tokens=20)
    assert eng.generate([seeded])[0].text == eng.generate([seeded, req("b", "other", None)])[0].text
    greedy = eng.generate([req("g", "top k one", rot)])[0].text
    assert eng.generate([req("k", "top k one", rot, temperature=1.0, top_k=1)])[0].text == greedy


def test_more_adapters_than_slots_queue_for_slots_never_evicting_a_running_row() -> None:
    eng = LoraEngine(EngineConfig(base_model=DEMO / "base", max_rows=8, max_loras=2, memory_budget_mb=256))
    rng = random.Random(2)
    work = [(sorted(SKILLS)[i % 4], random_text(rng)) for i in range(12)]
    results = eng.generate([req(str(i), t, skill_ref(s), max_tokens=64) for i, (s, t) in enumerate(work)])
    wrong = [(s, t, r.text) for (s, t), r in zip(work, results, strict=True) if r.text != expected(s, t)]
    assert len(wrong) <= 1, wrong
    assert len(eng.resident_adapters()) <= 2
    assert eng.adapter_loads() >= 4


def test_an_adapter_changed_since_registration_is_refused() -> None:
    tampered = AdapterRef(key="tampered", uri=str(DEMO / "adapters" / "upper"), sha256="0" * 64, name="upper")
    with pytest.raises(AdapterLoadFailed, match="sha256"):
        demo_engine().generate([req("t", "hi", tampered)])


def test_a_cold_adapter_loads_in_the_background_while_the_running_rows_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store is slow for one adapter; the rows already running keep stepping meanwhile."""
    loaded = threading.Event()
    real = adapters_module.local_dir

    def slow_store(uri: str, **kwargs: object) -> Path:
        if "novowel" in uri:
            time.sleep(1.0)
            loaded.set()
        return real(uri, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(adapters_module, "local_dir", slow_store)
    seen: list[tuple[bool, frozenset[str]]] = []

    def probe(job_ids: object) -> set[str]:
        seen.append((loaded.is_set(), frozenset(job_ids)))  # type: ignore[arg-type]
        return set()

    eng = LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=4, max_loras=4, memory_budget_mb=256), cancelled=probe
    )
    warm = skill_ref("upper", key="warm-upper")
    eng.generate([req("w0", "warm up", warm)])  # the warm adapter is in a slot now
    seen.clear()
    rows = [req("w1", "a warm row " * 8, warm, max_tokens=200), req("cold", "a cold row", skill_ref("novowel"))]
    _, cold_result = eng.generate(rows)
    assert cold_result.text == expected("novowel", "a cold row")
    before_load = [ids for done, ids in seen if not done]
    assert before_load and all(ids == {"w1"} for ids in before_load), "the warm row did not run during the load"
    assert any("cold" in ids for _, ids in seen)


def test_adapters_from_a_remote_store_are_cached_on_disk_by_sha256(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    src = DEMO / "adapters" / "swapcase"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        fs.pipe(f"/store/swapcase/{name}", (src / name).read_bytes())
    remote = skill_ref("swapcase", key="remote-swapcase", uri="memory://store/swapcase")
    eng = LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=4, max_loras=2, memory_budget_mb=256, cache_dir=tmp_path)
    )
    [r] = eng.generate([req("r", "Remote Store", remote)])
    assert r.text == expected("swapcase", "Remote Store")
    assert (tmp_path / remote.sha256 / "adapter_model.safetensors").is_file()
    fs.rm("/store", recursive=True)  # the disk cache now serves it
    again = LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=4, max_loras=2, memory_budget_mb=256, cache_dir=tmp_path)
    )
    assert again.generate([req("r2", "Remote Store", remote)])[0].text == r.text


def test_a_missing_remote_adapter_fails_with_a_clear_error(tmp_path: Path) -> None:
    gone = skill_ref("upper", key="gone", uri="memory://nowhere/upper")
    eng = LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=4, max_loras=2, memory_budget_mb=256, cache_dir=tmp_path)
    )
    with pytest.raises(AdapterLoadFailed, match="memory://nowhere/upper"):
        eng.generate([req("g", "hi", gone)])


def test_rows_beyond_the_kv_budget_wait_for_room_instead_of_running_out_of_memory() -> None:
    probe = demo_engine(max_rows=16, max_loras=4)  # the same slots as below: only the budget differs
    fixed = probe.budget.weights + probe.budget.slots + probe.budget.merge_copy
    budget_mb = -(-fixed // 2**20) + 1  # about 1 MiB of KV cache: two or three long rows at a time
    running: list[int] = []
    eng = LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=16, max_loras=4, memory_budget_mb=budget_mb),
        cancelled=lambda ids: running.append(len(ids)) or set(),  # type: ignore[func-returns-value]
    )
    rng = random.Random(4)
    requests = [req(str(i), random_text(rng), skill_ref("upper"), max_tokens=230) for i in range(6)]
    assert eng.generate(requests) == [probe.generate([r])[0] for r in requests]
    assert 1 <= max(running) <= eng.budget.kv_rows < 6  # rows waited for a KV slot, all finished


def test_a_budget_that_cannot_hold_one_full_row_refuses_to_start() -> None:
    with pytest.raises(BudgetTooSmall, match="LORAQ_MEMORY_BUDGET_MB"):
        LoraEngine(EngineConfig(base_model=DEMO / "base", memory_budget_mb=1))


def test_calls_from_several_threads_share_one_running_batch() -> None:
    """Two callers' rows decode in the same steps, and each gets what it gets alone."""
    steps: list[frozenset[str]] = []
    eng = LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=8, max_loras=4, memory_budget_mb=256),
        cancelled=lambda ids: steps.append(frozenset(ids)) or set(),  # type: ignore[func-returns-value]
    )
    first = [req(f"a{i}", f"first caller {i}", skill_ref("upper"), max_tokens=40) for i in range(3)]
    second = [req(f"b{i}", f"second caller {i}", skill_ref("rot13"), max_tokens=40) for i in range(3)]
    out: dict[str, list[object]] = {}
    threads = [
        threading.Thread(target=lambda n=n, r=r: out.__setitem__(n, eng.generate(r)))
        for n, r in (("a", first), ("b", second))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out["a"] == [eng.generate([r])[0] for r in first]
    assert out["b"] == [eng.generate([r])[0] for r in second]
    assert any(any(i.startswith("a") for i in s) and any(i.startswith("b") for i in s) for s in steps)


def test_a_row_that_breaks_the_forward_fails_alone_and_its_step_mates_finish(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault injection: the embedding raises for any batch holding the byte "~" (as a kernel bug would).

    The poison row is submitted while the good rows are running (from the
    engine's cancellation probe, which runs between steps), so it joins them."""
    out: dict[str, object] = {}

    def run(name: str, rows: list[GenRequest]) -> None:
        try:
            out[name] = eng.generate(rows)
        except Exception as exc:
            out[name] = exc

    bad = threading.Thread(target=run, args=("bad", [req("p", "a ~ poison", skill_ref("upper"))]))

    def submit_poison_once(job_ids: object) -> set[str]:
        if not bad.is_alive() and "bad" not in out:
            bad.start()
            deadline = time.monotonic() + 5
            while eng.scheduler.submitted() == 0 and time.monotonic() < deadline:  # until it waits at the next step
                time.sleep(0.001)
        return set()

    eng = LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=8, max_loras=4, memory_budget_mb=256),
        cancelled=submit_poison_once,
    )
    poison_id = eng.runner.tokenizer("~")["input_ids"][1]
    embed = eng.runner.model.get_input_embeddings()
    real_forward = embed.forward

    def forward(ids: torch.Tensor) -> torch.Tensor:
        if bool((ids == poison_id).any()):
            raise RuntimeError("kernel crashed")
        return real_forward(ids)

    monkeypatch.setattr(embed, "forward", forward)
    good = [req("g1", "hello there", skill_ref("upper")), req("g2", "second good", skill_ref("swapcase"))]
    run("good", good)
    bad.join(60)
    assert isinstance(out["bad"], RuntimeError)
    shared = [int(m.group(1)) for m in map(re.compile(r"a step of (\d+) rows failed").search, caplog.messages) if m]
    assert shared and max(shared) >= 2, caplog.messages  # the good rows were in the failing step
    assert [r.text for r in out["good"]] == ["HELLO THERE", expected("swapcase", "second good")]  # type: ignore[union-attr]


@pytest.mark.parametrize("swap_wait_s", [60.0, 0.0])
def test_rows_of_resident_adapters_go_before_a_row_needing_a_swap_until_it_has_waited_long_enough(
    monkeypatch: pytest.MonkeyPatch, swap_wait_s: float
) -> None:
    monkeypatch.setattr(scheduler_module, "SWAP_WAIT_S", swap_wait_s)  # the bound, made deterministic
    steps: list[frozenset[str]] = []
    eng = LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=2, max_loras=1, memory_budget_mb=256),
        cancelled=lambda ids: steps.append(frozenset(ids)) or set(),  # type: ignore[func-returns-value]
    )
    upper, rot13 = skill_ref("upper"), skill_ref("rot13")
    eng.generate([req("warm1", "warm", rot13)])
    eng.generate([req("warm2", "warm", upper)])  # both in host memory; upper holds the only slot
    steps.clear()
    rows = [req("swap", "needs a swap", rot13), *(req(f"u{i}", f"resident {i}", upper) for i in range(3))]
    results = eng.generate(rows)
    assert results[0].text == expected("rot13", "needs a swap")
    assert [r.text for r in results[1:]] == [f"RESIDENT {i}" for i in range(3)]
    if swap_wait_s:
        assert steps[0] <= {"u0", "u1", "u2"}, steps[:3]  # the resident rows went first
        assert eng.adapter_loads() == 3  # rot13, upper, then rot13 once: not back and forth
    else:
        assert "swap" in steps[0]  # overdue at once: arrival order


def test_streamed_rows_publish_deltas_that_begin_their_result_and_other_rows_publish_nothing() -> None:
    published: list[Delta] = []
    engine = LoraEngine(
        EngineConfig(base_model=DEMO / "base", max_rows=4, max_loras=2, memory_budget_mb=256), deltas=published.extend
    )
    try:
        upper = skill_ref("upper")
        text = "streaming one token at a time"
        results = engine.generate(
            [
                replace(req("plain", text, upper, max_tokens=64), stream=True),
                replace(req("stopped", text, upper, max_tokens=64, stop=["TOKEN"]), stream=True),
                req("quiet", text, upper, max_tokens=64),
            ]
        )
    finally:
        engine.close()
    assert [r.text for r in results] == [text.upper(), "STREAMING ONE ", text.upper()]
    for job, result in (("plain", results[0]), ("stopped", results[1])):
        deltas = [d for d in published if d.job_id == job]
        assert len(deltas) > 10 and [d.pos for d in deltas] == sorted(d.pos for d in deltas)
        sent = "".join(d.text for d in deltas)
        assert result.text.startswith(sent) and len(sent) >= len(result.text) - len("TOKEN")
    assert not [d for d in published if d.job_id == "quiet"]
