"""Next-token choice per row: greedy, or temperature / top-k / top-p sampling.

Each row brings its own settings. A seeded row draws from its own
``torch.Generator``, so its tokens do not depend on its batch-mates or on
when it joined the running batch. The warpers follow transformers'
``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper``
so a seeded row gives what ``generate`` would give for the same logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from registry.schemas import SamplingParams


def row_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.temperature == 0 or params.seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed)
    return gen


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One row's logits [vocab] -> probabilities after temperature, top-k and top-p."""
    scores = logits.float() / params.temperature
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - params.top_p)
        remove[-1] = False  # keep at least the most likely token
        scores = scores.masked_fill(remove.scatter(0, order, remove), -float("inf"))
    return scores.softmax(dim=-1)


def choose_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
) -> list[int]:
    """logits [rows, vocab] -> one token per row. Greedy rows take one argmax for all of them."""
    tokens = logits.argmax(dim=-1).tolist()
    for i, p in enumerate(params):
        if p.temperature > 0:
            probs = warp(logits[i], p)
            tokens[i] = int(torch.multinomial(probs, 1, generator=generators[i]).item())
    return [int(t) for t in tokens]
