"""The settings both sides of the queue must agree on (env prefix ``LORAQ_``).

Gateway and worker settings each hold one :class:`QueueSettings` read from
the same variables, so a visibility timeout or a chunk size can no longer
be set on one side and forgotten on the other.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class QueueSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAQ_", extra="ignore")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Broker and result backend.")
    visibility_timeout_s: int = Field(
        default=20,
        ge=5,
        description="A dead worker's messages go back to their queue after this; live ones are kept by heartbeats.",
    )
    bulk_chunk_jobs: int = Field(
        default=16, ge=1, le=256, description="Jobs of one adapter per queue message, for bulk files."
    )
