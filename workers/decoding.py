"""Turning generated token ids into a result: eos, max_tokens and stop strings.

Pure functions over lists of ids and a decode callable, shared by engines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from registry.schemas import FinishReason, GenerationResult, SamplingParams


def finish_row(
    ids: Sequence[int],
    *,
    sampling: SamplingParams,
    eos_ids: set[int],
    pad_id: int | None,
    prompt_tokens: int,
    decode: Callable[[Sequence[int]], str],
) -> GenerationResult:
    """Cut ``ids`` at the first eos, at ``max_tokens``, or at the earliest stop string.

    ``completion_tokens`` counts the tokens the caller receives (plus the
    eos when it ended the row), the way OpenAI's ``usage`` does.
    """
    out: list[int] = []
    reason = FinishReason.LENGTH
    for tok in ids:
        if tok in eos_ids:
            reason = FinishReason.STOP
            break
        if pad_id is not None and tok == pad_id:
            continue
        out.append(tok)
        if len(out) >= sampling.max_tokens:
            break
    text = decode(out)
    cut = _earliest_stop(text, sampling.stop)
    if cut is not None:
        index, stop = cut
        used = _tokens_covering(out, index + len(stop), decode)
        return GenerationResult(
            text=text[:index],
            finish_reason=FinishReason.STOP,
            prompt_tokens=prompt_tokens,
            completion_tokens=used,
        )
    return GenerationResult(text=text, finish_reason=reason, prompt_tokens=prompt_tokens, completion_tokens=len(out))


def _earliest_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    found = [(text.find(s), s) for s in stops if s in text]
    return min(found) if found else None


def _tokens_covering(ids: Sequence[int], chars: int, decode: Callable[[Sequence[int]], str]) -> int:
    """The fewest leading tokens whose text reaches ``chars`` characters."""
    for n in range(1, len(ids) + 1):
        if len(decode(ids[:n])) >= chars:
            return n
    return len(ids)
