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
    out, reason = _kept(ids, max_tokens=sampling.max_tokens, eos_ids=eos_ids, pad_id=pad_id)
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


def streamable_text(
    ids: Sequence[int], *, sampling: SamplingParams, eos_ids: set[int], decode: Callable[[Sequence[int]], str]
) -> str:
    """The text of a row still generating that its result will begin with: what a stream may send now.

    Held back: the last characters that could be the start of a stop string (the result is cut
    before a stop string, so they may never be part of it), and a trailing U+FFFD (a character whose
    bytes have not all been generated yet decodes as one).
    """
    out, _ = _kept(ids, max_tokens=sampling.max_tokens, eos_ids=eos_ids, pad_id=None)
    text = decode(out)
    if sampling.stop:
        cut = _earliest_stop(text, sampling.stop)
        end = cut[0] if cut is not None else len(text) - max(map(len, sampling.stop)) + 1
        text = text[: max(0, end)]
    return text.rstrip("\ufffd")


def _kept(
    ids: Sequence[int], *, max_tokens: int, eos_ids: set[int], pad_id: int | None
) -> tuple[list[int], FinishReason]:
    """The tokens a result is decoded from (up to the first eos, without pads, at most ``max_tokens``),
    and the reason they end if no stop string cuts them sooner."""
    out: list[int] = []
    for tok in ids:
        if tok in eos_ids:
            return out, FinishReason.STOP
        if pad_id is not None and tok == pad_id:
            continue
        out.append(tok)
        if len(out) >= max_tokens:
            break
    return out, FinishReason.LENGTH


def _earliest_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    found = [(text.find(s), s) for s in stops if s in text]
    return min(found) if found else None


def _tokens_covering(ids: Sequence[int], chars: int, decode: Callable[[Sequence[int]], str]) -> int:
    """The fewest leading tokens whose text reaches ``chars`` characters."""
    for n in range(1, len(ids) + 1):
        if len(decode(ids[:n])) >= chars:
            return n
    return len(ids)
