"""The schema of a job, shared by gateway and workers (docs/architecture.md, "A job").

Requests are validated here once; the worker receives :class:`TaskJob` in the
Celery message and answers with :class:`GenerationResult`.
"""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ADAPTER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
AdapterName = Annotated[
    str,
    Field(
        pattern=ADAPTER_NAME_PATTERN,
        description="Lowercase letters, digits, '-' and '_', at most 63; names the queue lora.<name>.",
    ),
]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class FinishReason(StrEnum):
    STOP = "stop"  # end of sequence or a stop string
    LENGTH = "length"  # max_tokens reached


class Priority(IntEnum):
    """Celery priorities on Redis: a lower number is served first.

    Values sit on kombu's default Redis priority steps (0, 3, 6, 9).
    """

    INTERACTIVE = 0
    BULK = 6
    SHADOW = 9


class SamplingParams(BaseModel):
    """Per-row sampling. ``temperature == 0`` means greedy (the default: batch
    work is usually wanted reproducible)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=64, ge=1, description="Upper bound on generated tokens.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=1000, description="Sample among the k most likely tokens; 0 = all.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[str] = Field(default_factory=list, max_length=4, description="Up to 4 stop strings.")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [value]
        return [] if value is None else value

    @field_validator("stop")
    @classmethod
    def _stop_non_empty(cls, value: list[str]) -> list[str]:
        if any(not s or len(s) > 64 or "\x00" in s for s in value):
            raise ValueError("each stop string must be 1 to 64 characters, without NUL")
        return value


class TextPart(BaseModel):
    """One part of a message's content in OpenAI's list form; only text is served."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat turn; list-of-parts content is joined into one string at validation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = Field(max_length=1 << 20)
    name: str | None = Field(default=None, max_length=64)

    @field_validator("content", mode="before")
    @classmethod
    def _join_parts(cls, value: object) -> object:
        if isinstance(value, list):
            parts = [TextPart.model_validate(p) for p in value]
            return "".join(p.text for p in parts)
        return "" if value is None else value

    @field_validator("content")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL (\\x00) characters")
        return value


class JobCreate(SamplingParams):
    """Body of ``POST /v1/jobs``: a ``prompt``, or chat ``messages`` that the worker renders with the
    base model's chat template."""

    adapter: AdapterName
    prompt: str = Field(default="", description="Text to continue; give this or messages.")
    messages: list[ChatMessage] | None = Field(
        default=None, min_length=1, max_length=256, description="Chat turns, rendered with the chat template."
    )
    routing_key: str | None = Field(
        default=None,
        max_length=256,
        description="Keeps one user on one adapter version.",
    )
    idempotency_key: str | None = Field(
        default=None,
        max_length=256,
        description="A retried submit with the same key returns the same job.",
    )
    stream: bool = Field(
        default=False,
        description="Publish the text as it is generated to the job's token stream (what OpenAI stream: true reads).",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2000,
        description="Where to send this job's end event (job.completed, job.failed, job.cancelled), signed with "
        "the tenant's webhook secret (POST /v1/webhooks/secret first).",
    )

    @field_validator("prompt", "routing_key", "idempotency_key")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL (\\x00) characters")
        return value

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> JobCreate:
        if (self.messages is None) == (not self.prompt):
            raise ValueError("give either prompt (text) or messages (chat), not both and not neither")
        return self

    def sampling(self) -> SamplingParams:
        return SamplingParams.model_validate(self.model_dump(include=set(SamplingParams.model_fields)))

    def prompt_text(self) -> str:
        """Every character the prompt will carry, for limits (the template adds a few more)."""
        if self.messages is None:
            return self.prompt
        return "\n".join(m.content for m in self.messages)


class TaskJob(BaseModel):
    """What a Celery message carries for one job: enough to run without a DB read."""

    job_id: str
    adapter: str
    version_id: int
    version: int
    uri: str
    sha256: str
    prompt: str
    messages: list[ChatMessage] | None = None  # chat: the worker renders them into the prompt
    sampling: SamplingParams
    enqueued_at: float  # epoch seconds, for queue wait
    tenant: str | None = None  # the submitting tenant's name, for log lines
    stream: bool = False  # publish text deltas as the engine decodes them (workers/contract/streams.py)


class GenerationResult(BaseModel):
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class JobError(BaseModel):
    code: str
    message: str


class JobView(BaseModel):
    """Body of ``GET /v1/jobs/{id}``."""

    id: str
    object: str = "job"
    status: JobStatus
    adapter: str
    version: int
    priority: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    worker: str | None = None
    queue_wait_s: float | None = None
    run_time_s: float | None = None
    result: GenerationResult | None = None
    error: JobError | None = None


class JobAccepted(BaseModel):
    id: str
    object: str = "job"
    status: JobStatus
    adapter: str
    version: int


class AdapterCreate(BaseModel):
    """Body of ``POST /v1/adapters`` (admin)."""

    model_config = ConfigDict(extra="forbid")

    name: AdapterName
    uri: str = Field(
        min_length=1,
        max_length=4096,
        description="Local directory or file:// URI of a PEFT LoRA.",
    )
    staged: bool = Field(
        default=False,
        description="Record the version without routing traffic to it; a route that names it activates it.",
    )
    public: bool = Field(default=True, description="Public adapters are usable by every tenant.")
    owner: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="Tenant that owns the adapter (a private one is usable by it alone); default: the admin.",
    )


class AdapterVersionView(BaseModel):
    version: int
    status: str
    uri: str | None  # shown to admins only: it names paths on the server
    sha256: str
    size_bytes: int
    r: int
    alpha: float
    target_modules: list[str]
    created_at: datetime


class ShadowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    fraction: float = Field(gt=0.0, le=1.0, description="Share of the adapter's jobs also run on this version.")


class RouteSet(BaseModel):
    """Body of ``PUT /v1/adapters/{name}/route``."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[int, int] = Field(description="Version number -> percent; must sum to 100.")
    shadow: ShadowSpec | None = None


class LatencyStats(BaseModel):
    p50: float
    p95: float
    p99: float
    samples: int  # recent finished jobs behind the percentiles


class VersionStats(BaseModel):
    """One version's record, for comparing a canary with what it replaces."""

    version: int
    status: str
    jobs: dict[str, int]  # status -> count
    error_rate: float  # failed / (succeeded + failed)
    run_time_s: LatencyStats
    queue_wait_s: LatencyStats
    prompt_tokens: int
    completion_tokens: int
    shadow_compared: int = 0  # finished shadow jobs on this version whose primary also succeeded
    shadow_identical_share: float | None = None  # of those, the share whose text equals the primary's


class AdapterView(BaseModel):
    name: str
    object: str = "adapter"
    public: bool
    owner: str | None
    queue: str
    routes: dict[int, int]  # version -> weight (percent)
    shadow: ShadowSpec | None = None
    versions: list[AdapterVersionView]
