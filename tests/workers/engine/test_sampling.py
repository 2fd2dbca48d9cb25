"""Per-row sampling warps logits as transformers' warpers do."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from registry.schemas import SamplingParams
from workers.engine.sampling import choose_tokens, row_generator, warp


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    temperature=st.sampled_from([0.3, 0.7, 1.0, 1.8]),
    top_p=st.sampled_from([0.05, 0.5, 0.9, 1.0]),
    top_k=st.sampled_from([0, 1, 5, 50]),
)
def test_warp_equals_transformers_temperature_top_k_top_p(
    seed: int, temperature: float, top_p: float, top_k: int
) -> None:
    logits = torch.randn(64, generator=torch.Generator().manual_seed(seed)) * 3
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    scores = TemperatureLogitsWarper(temperature)(None, logits[None].clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    torch.testing.assert_close(warp(logits, params), scores.softmax(-1)[0])


def test_greedy_rows_take_the_argmax_and_seeded_rows_reproduce() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(), SamplingParams(temperature=1.0, seed=5), SamplingParams(temperature=1.0, seed=5)]
    gens = [row_generator(p, torch.device("cpu")) for p in params]
    tokens = choose_tokens(logits, params, gens)
    assert tokens[0] == int(logits[0].argmax())
    again = choose_tokens(logits[1:2], params[1:2], [row_generator(params[1], torch.device("cpu"))])
    assert again[0] == tokens[1]
    assert gens[0] is None
