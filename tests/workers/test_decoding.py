"""Finishing a generated row: eos, max_tokens, stop strings, token counts."""

from __future__ import annotations

from collections.abc import Sequence

from registry.schemas import FinishReason, SamplingParams
from workers.decoding import finish_row, streamable_text

EOS, PAD = 2, 0


def decode(ids: Sequence[int]) -> str:
    return "".join(chr(ord("a") + i - 10) for i in ids)


def row(ids: list[int], **sampling: object):  # type: ignore[no-untyped-def]
    return finish_row(
        ids, sampling=SamplingParams(**sampling), eos_ids={EOS}, pad_id=PAD, prompt_tokens=3, decode=decode
    )


def test_eos_ends_the_row_with_stop() -> None:
    r = row([10, 11, EOS, PAD, PAD], max_tokens=10)
    assert (r.text, r.finish_reason, r.completion_tokens, r.prompt_tokens) == ("ab", FinishReason.STOP, 2, 3)


def test_max_tokens_cuts_the_row_with_length() -> None:
    r = row([10, 11, 12, 13, EOS], max_tokens=3)
    assert (r.text, r.finish_reason, r.completion_tokens) == ("abc", FinishReason.LENGTH, 3)


def test_running_out_of_generated_tokens_without_eos_is_length() -> None:
    r = row([10, 11], max_tokens=5)
    assert r.finish_reason is FinishReason.LENGTH


def test_earliest_stop_string_truncates_and_counts_tokens_through_it() -> None:
    r = row([10, 11, 12, 13, 14, EOS], max_tokens=10, stop=["de", "c"])
    assert (r.text, r.finish_reason, r.completion_tokens) == ("ab", FinishReason.STOP, 3)


def streamable(ids: list[int], **sampling: object) -> str:
    return streamable_text(ids, sampling=SamplingParams(**sampling), eos_ids={EOS}, decode=decode)


def test_what_a_stream_sends_is_always_the_beginning_of_the_result() -> None:
    ids = [10, 11, 12, 13, 14, 15, EOS]  # "abcdef"
    for stops in ([], ["de"], ["cx", "ef"], ["bcd", "z"]):
        final = row(ids, max_tokens=10, stop=stops).text
        for n in range(len(ids) + 1):
            assert final.startswith(streamable(ids[:n], max_tokens=10, stop=stops)), (stops, n)


def test_a_stream_holds_back_what_could_start_a_stop_string_and_an_unfinished_character() -> None:
    assert streamable([10, 11, 12], max_tokens=10, stop=["cx"]) == "ab"  # "c" may be the start of "cx"
    assert streamable([10, 11, 12, 13], max_tokens=10, stop=["cd"]) == "ab"  # cut before the stop string
    assert streamable([10, 11, 12], max_tokens=10) == "abc"

    def partial(ids: Sequence[int]) -> str:  # a multi-byte character whose last byte is still to come
        return decode(ids) + "\ufffd"

    assert streamable_text([10], sampling=SamplingParams(), eos_ids={EOS}, decode=partial) == "a"
