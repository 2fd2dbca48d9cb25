"""The gateway's settings (env prefix ``LORAQ_``). Secrets have no default."""

from __future__ import annotations

import functools
import json
from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.retention import Policy
from registry.settings import DatabaseSettings
from workers.contract.settings import QueueSettings
from workers.demo_model import DEMO_ADAPTERS, DEMO_BASE


@functools.lru_cache(maxsize=8)
def recorded_name(base_model: Path) -> str:
    try:
        name = json.loads((base_model / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError):
        name = None
    return str(name or base_model.name)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAQ_", extra="ignore")

    admin_key: SecretStr | None = Field(
        default=None, description="Bearer key of the admin tenant; admin endpoints refuse all when unset."
    )
    base_model: Path = Field(default=DEMO_BASE, description="Base model directory adapters are checked against.")
    max_prompt_chars: int = Field(default=32_768, ge=1)
    max_tokens_limit: int = Field(default=4096, ge=1, description="Largest max_tokens a job may ask for.")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body accepted.")
    max_adapter_bytes: int = Field(default=1 << 30, ge=1, description="Largest adapter weights file.")
    max_wait_s: float = Field(default=60.0, ge=0, description="Longest long-poll of GET /v1/jobs/{id}?wait=.")
    wait_fallback_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Waiting requests wake on completion notifications; one registry read for all of them this "
        "often finds what a lost notification did not say.",
    )
    max_file_bytes: int = Field(default=512 << 20, ge=1024, description="Largest Batch API file upload.")
    files_dir: Path | None = Field(default=None, description="Where Batch API files live; default $LORAQ_HOME/files.")
    ingest_chunk_lines: int = Field(
        default=2000, ge=1, le=100_000, description="Lines of a bulk file recorded per transaction."
    )
    batch_lease_s: float = Field(
        default=30.0, gt=0, description="A gateway that stops renewing its ingest lease for this long is taken over."
    )
    batch_poll_s: float = Field(default=0.5, gt=0, description="How often batches are ingested, counted, finished.")
    completion_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest wait of /v1/completions and /v1/chat/completions for the result."
    )
    adapter_roots: list[str] | None = Field(
        default=None,
        description="Directories, or store prefixes such as s3://bucket/adapters, adapters may be registered "
        "from (JSON list); default: the demo adapters and $LORAQ_HOME/adapters.",
    )
    webhook_allow: list[str] = Field(
        default_factory=list,
        description="Hosts or networks webhooks may reach although private, loopback or link-local (JSON list, "
        'e.g. ["127.0.0.1/32"]); by default only public addresses are.',
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60, description="One webhook attempt's longest time.")
    webhook_senders: int = Field(default=8, ge=1, le=256, description="Webhook attempts in flight per gateway.")
    webhook_retry_base_s: float = Field(
        default=2.0, gt=0, le=3600, description="A failed webhook waits up to this, doubled per attempt, jittered."
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Ended jobs, ended batches, their files and settled webhook deliveries are deleted this many "
        "days after they ended; counts stay in the rollups (per hour past it). Unset: kept forever.",
    )
    purge_interval_s: float = Field(
        default=60.0, ge=60, description="How often a gateway looks for what the retention no longer keeps."
    )
    purge_chunk_rows: int = Field(default=500, ge=1, le=10_000, description="Rows the purge deletes per transaction.")
    purge_pause_s: float = Field(
        default=0.025,
        ge=0,
        le=10,
        description="The purge's pause between transactions (at least as long as the last one took): requests and "
        "workers go first.",
    )
    rollup_backfill: bool = Field(
        default=True,
        description="Count the jobs a database held before its rollups existed (an upgrade across 0006) into "
        "them in the background. Turn off while older gateways or workers still run; `loraq db backfill` then "
        "does it by hand.",
    )
    backfill_chunk_rows: int = Field(default=100, ge=1, le=50_000, description="Jobs the backfill counts per step.")
    backfill_pause_s: float = Field(
        default=0.025,
        ge=0,
        le=10,
        description="The backfill's pause between steps (at least as long as the last one took).",
    )
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)  # Redis URL, chunk size: the workers read the same

    def roots(self) -> list[str]:
        """Where registered adapters may live; nothing outside them is read."""
        if self.adapter_roots is not None:
            return self.adapter_roots
        return [str(DEMO_ADAPTERS), str(self.db.home / "adapters")]

    def base_model_name(self) -> str:
        """The base's recorded name (``_name_or_path`` in its config.json), else its directory name;
        OpenAI requests may name it as ``model`` to run without an adapter. Read once per path: it is
        asked on every OpenAI request."""
        return recorded_name(self.base_model)

    def retention(self) -> Policy:
        """What the purge keeps (``registry.retention``), and its pace."""
        keep = None if self.retention_days is None else timedelta(days=self.retention_days)
        return Policy(keep=keep, chunk_rows=self.purge_chunk_rows, pause_s=self.purge_pause_s)

    def files_path(self) -> Path:
        return self.files_dir or self.db.home / "files"

    def local_roots(self) -> list[Path]:
        return [Path(r) for r in self.roots() if "://" not in r]
