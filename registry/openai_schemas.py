"""The OpenAI request and response shapes loraq speaks, and their mapping onto a job.

Shared by the gateway's ``/v1/completions`` and ``/v1/chat/completions`` and by
bulk-file ingest (a Batch API line's ``body`` is one of these requests), so a
request means the same thing whichever way it arrives. ``model`` names the
adapter. Parameters loraq cannot honour are refused with
``unsupported_parameter`` rather than silently ignored; fields it does not
know are ignored, as OpenAI-compatible servers do, so newer clients still work.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from registry.errors import InvalidRequest, NotFound
from registry.schemas import ADAPTER_NAME_PATTERN, ChatMessage, GenerationResult, JobCreate

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"
ENDPOINTS = (COMPLETIONS, CHAT_COMPLETIONS)
DEFAULT_CHAT_MAX_TOKENS = 256  # OpenAI's default is "up to the context"; loraq bounds it (documented)
_ADAPTER_NAME = re.compile(ADAPTER_NAME_PATTERN)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAIRequest(BaseModel):
    """Fields both endpoints share, with OpenAI's defaults (temperature 1, not loraq's greedy 0)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=1000, description="loraq extension (as vLLM): 0 or -1 = all.")
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    user: str | None = Field(default=None, max_length=256, description="Routing key: one user keeps one version.")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def _refuse_unsupported(self) -> None:
        checks: list[tuple[str, bool]] = [
            ("n", self.n not in (None, 1)),
            ("presence_penalty", self.presence_penalty not in (None, 0.0)),
            ("frequency_penalty", self.frequency_penalty not in (None, 0.0)),
            ("logit_bias", bool(self.logit_bias)),
        ]
        for name, bad in checks:
            if bad:
                raise unsupported(name)

    def _job(self, aliases: Mapping[str, str] | None, *, max_tokens: int, **content: Any) -> JobCreate:
        self._refuse_unsupported()
        return JobCreate.model_validate(
            {
                "adapter": adapter_of_model(self.model, aliases),
                "max_tokens": max_tokens,
                "temperature": 1.0 if self.temperature is None else self.temperature,
                "top_p": 1.0 if self.top_p is None else self.top_p,
                "top_k": max(0, self.top_k or 0),
                "seed": self.seed,
                "stop": self.stop,
                "routing_key": self.user,
                **content,
            }
        )


class CompletionRequest(_OpenAIRequest):
    """Body of ``POST /v1/completions``."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def to_job(self, aliases: Mapping[str, str] | None = None) -> JobCreate:
        """The job this request asks for; ``aliases`` maps other model names to adapters (the base model)."""
        for name, bad in (
            ("echo", bool(self.echo)),
            ("logprobs", self.logprobs is not None),
            ("best_of", self.best_of not in (None, 1)),
            ("suffix", bool(self.suffix)),
        ):
            if bad:
                raise unsupported(name)
        prompt = self.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise InvalidRequest(
                    "prompt: one prompt per request; send several as a Batch API file (POST /v1/batches).",
                    code="unsupported_parameter",
                )
            prompt = prompt[0]
        return self._job(aliases, max_tokens=16 if self.max_tokens is None else self.max_tokens, prompt=prompt)


class ChatCompletionRequest(_OpenAIRequest):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    def to_job(self, aliases: Mapping[str, str] | None = None) -> JobCreate:
        fmt = (self.response_format or {}).get("type", "text")
        for name, bad in (
            ("logprobs", bool(self.logprobs) or self.top_logprobs is not None),
            ("tools", bool(self.tools)),
            ("response_format", fmt != "text"),
        ):
            if bad:
                raise unsupported(name)
        max_tokens = self.max_completion_tokens or self.max_tokens or DEFAULT_CHAT_MAX_TOKENS
        return self._job(aliases, max_tokens=max_tokens, messages=[m.model_dump() for m in self.messages])


def unsupported(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"{name}: loraq does not support this parameter's non-default values; leave it out.",
        code="unsupported_parameter",
    )


def adapter_of_model(model: str, aliases: Mapping[str, str] | None = None) -> str:
    """The adapter a request's ``model`` names; a name no adapter can have is refused here."""
    model = (aliases or {}).get(model, model)
    if not _ADAPTER_NAME.match(model):
        raise NotFound(
            f"model {model!r} does not exist; GET /v1/models lists the models (adapters) you may use.",
            code="model_not_found",
        )
    return model


def request_for(endpoint: str, body: dict[str, Any]) -> CompletionRequest | ChatCompletionRequest:
    if endpoint == CHAT_COMPLETIONS:
        return ChatCompletionRequest.model_validate(body)
    return CompletionRequest.model_validate(body)


def usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def response_id(endpoint: str, job_id: str) -> str:
    """A stable OpenAI-style id per job: ``cmpl-…`` or ``chatcmpl-…``."""
    prefix = "chatcmpl" if endpoint == CHAT_COMPLETIONS else "cmpl"
    return f"{prefix}-{uuid.UUID(job_id).hex}"


def response_body(endpoint: str, *, job_id: str, created: int, model: str, result: GenerationResult) -> dict[str, Any]:
    """The completion object OpenAI answers with (also the ``body`` of a Batch output line)."""
    reason = result.finish_reason.value
    choice: dict[str, Any]
    if endpoint == CHAT_COMPLETIONS:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": reason}
        obj = "text_completion"
    return {
        "id": response_id(endpoint, job_id),
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(result),
    }


@dataclass(frozen=True)
class ChunkStream:
    """The ``data:`` objects of one streamed answer, made as its text arrives: :meth:`opening`, one
    :meth:`text` per delta, then :meth:`closing` (``[DONE]`` is the caller's)."""

    endpoint: str
    job_id: str
    created: int
    model: str

    def opening(self) -> list[dict[str, Any]]:
        """Chat announces the assistant's role first, as OpenAI does; completions start with text."""
        return [self._chunk({"role": "assistant", "content": ""}, None)] if self._chat else []

    def text(self, delta: str) -> dict[str, Any]:
        return self._chunk({"content": delta} if self._chat else delta, None)

    def closing(self, result: GenerationResult, *, include_usage: bool) -> list[dict[str, Any]]:
        """The finish reason, then ``usage`` in a chunk of no choices if the request asked for it."""
        chunks = [self._chunk({} if self._chat else "", result.finish_reason.value)]
        if include_usage:
            chunks.append({**self._head(), "choices": [], "usage": usage(result)})
        return chunks

    @property
    def _chat(self) -> bool:
        return self.endpoint == CHAT_COMPLETIONS

    def _head(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self._chat else "text_completion"
        return {
            "id": response_id(self.endpoint, self.job_id),
            "object": obj,
            "created": self.created,
            "model": self.model,
        }

    def _chunk(self, delta: dict[str, Any] | str, finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        choice.update({"delta": delta} if self._chat else {"text": delta})
        return {**self._head(), "choices": [choice]}


def stream_chunks(
    endpoint: str, *, job_id: str, created: int, model: str, result: GenerationResult, include_usage: bool
) -> list[dict[str, Any]]:
    """Every ``data:`` object of a streamed answer whose whole text is known, in order."""
    fmt = ChunkStream(endpoint=endpoint, job_id=job_id, created=created, model=model)
    return [*fmt.opening(), fmt.text(result.text), *fmt.closing(result, include_usage=include_usage)]
