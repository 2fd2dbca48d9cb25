"""OpenAI requests map onto jobs the way OpenAI documents them; the rest is refused by name."""

from __future__ import annotations

import pytest

from registry.errors import InvalidRequest, NotFound
from registry.openai_schemas import ChatCompletionRequest, CompletionRequest, stream_chunks
from registry.schemas import FinishReason, GenerationResult


def test_completion_defaults_are_openais_and_user_is_the_routing_key() -> None:
    job = CompletionRequest.model_validate({"model": "upper", "prompt": "x", "user": "u-1", "stop": "\n"}).to_job()
    assert (job.max_tokens, job.temperature, job.top_p, job.routing_key, job.stop) == (16, 1.0, 1.0, "u-1", ["\n"])


def test_chat_max_completion_tokens_wins_over_max_tokens() -> None:
    body = {
        "model": "upper",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 5,
        "max_completion_tokens": 7,
    }
    assert ChatCompletionRequest.model_validate(body).to_job().max_tokens == 7


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 2},
        {"presence_penalty": 0.5},
        {"logit_bias": {"1": 2.0}},
        {"tools": [{"type": "function"}]},
        {"response_format": {"type": "json_object"}},
        {"logprobs": True},
    ],
)
def test_chat_parameters_loraq_cannot_honour_are_refused_by_name(extra: dict[str, object]) -> None:
    body = {"model": "upper", "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(InvalidRequest) as refused:
        ChatCompletionRequest.model_validate(body).to_job()
    assert refused.value.code == "unsupported_parameter" and next(iter(extra)) in refused.value.message


def test_unknown_fields_are_ignored_and_impossible_model_names_are_404() -> None:
    CompletionRequest.model_validate({"model": "upper", "prompt": "x", "some_new_field": 1}).to_job()
    with pytest.raises(NotFound):
        CompletionRequest.model_validate({"model": "gpt-4o/mini", "prompt": "x"}).to_job()


def test_a_stream_ends_with_the_finish_reason_then_usage() -> None:
    result = GenerationResult(text="HI", finish_reason=FinishReason.LENGTH, prompt_tokens=1, completion_tokens=2)
    chunks = stream_chunks(
        "/v1/chat/completions",
        job_id="00000000-0000-0000-0000-000000000001",
        created=1,
        model="m",
        result=result,
        include_usage=True,
    )
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "HI"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 3
