"""SQLAlchemy 2 models of the whole registry (docs/architecture.md, "The registry").

The schema only changes through Alembic (``migrations/``); a test checks that
these models and the migrated database agree.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the registry; use registry.models.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class BaseModelRow(Base):
    """A base model some adapters were trained on (matched by name)."""

    __tablename__ = "base_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer, default=None)  # None: no limit
    max_tokens_per_day: Mapped[int | None] = mapped_column(BigInteger, default=None)  # UTC day; None: no limit
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """Only a SHA-256 of the key is stored; the key itself is shown once."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Adapter(Base):
    """A named adapter; its queue is ``lora.<name>``."""

    __tablename__ = "adapters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    owner_tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), default=None)
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    shadow_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", use_alter=True), default=None
    )
    shadow_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("adapter_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    r: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    target_modules: Mapped[list[str]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="active")  # staged/active/retired
    created_by: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(default=None)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)


class Route(Base):
    """One weighted leg of an adapter's traffic split; weights sum to 100."""

    __tablename__ = "routes"
    __table_args__ = (UniqueConstraint("adapter_id", "version_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"))
    weight: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RouteChange(Base):
    """Every route an adapter has had, newest last: who changed it, when, how; rollback pops one."""

    __tablename__ = "route_changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    weights: Mapped[dict[str, Any]] = mapped_column()  # version number (as text) -> weight percent
    shadow_version: Mapped[int | None] = mapped_column(Integer, default=None)  # version number
    shadow_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    action: Mapped[str] = mapped_column(String(16))  # register / set / promote / retire
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FileRow(Base):
    """An uploaded or generated file (Batch API input, output, error)."""

    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    storage_uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # when the purge deletes it: a batch output's ``output_expires_after`` (OpenAI's file ``expires_at``)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)


class BatchRow(Base):
    """A bulk file's run, in the OpenAI Batch API's terms."""

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_status", "status"),
        Index("ix_batches_output_expires_at", "output_expires_at"),  # the purge's next batches to expire
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16), default="24h")
    status: Mapped[str] = mapped_column(String(16), default="validating")
    input_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    output_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"), default=None)
    error_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"), default=None)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    ingested_lines: Mapped[int] = mapped_column(Integer, default=0)  # lines of the input file read so far
    ingest_offset: Mapped[int] = mapped_column(BigInteger, default=0)  # byte offset of the next line to read
    ingest_done: Mapped[bool] = mapped_column(Boolean, default=False)  # the whole file is read
    published_lines: Mapped[int] = mapped_column(Integer, default=0)  # lines whose jobs are surely published
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)  # the gateway ingesting it
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    errors: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # batch-level errors (OpenAI's shape)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    in_progress_at: Mapped[datetime | None] = mapped_column(default=None)
    finalizing_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    failed_at: Mapped[datetime | None] = mapped_column(default=None)
    expired_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelling_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelled_at: Mapped[datetime | None] = mapped_column(default=None)
    output_expires_s: Mapped[int | None] = mapped_column(Integer, default=None)  # OpenAI's output_expires_after
    # when its output and error files (and its jobs) are purged; set when it ends, cleared once they are
    output_expires_at: Mapped[datetime | None] = mapped_column(default=None)


class BatchLineError(Base):
    """A line of a bulk file that was refused at ingest; it goes to the batch's error file."""

    __tablename__ = "batch_line_errors"
    __table_args__ = (UniqueConstraint("batch_id", "line_no"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    line_no: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str | None] = mapped_column(String(512), default=None)
    code: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)


class Job(Base):
    """One generation request and, once terminal, its result.

    Status moves queued -> running -> succeeded/failed/cancelled; a terminal
    row is never written again (exactly-once result recording).
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ux_jobs_batch_custom_id", "batch_id", "custom_id", unique=True),
        Index("ix_jobs_adapter_status_created", "adapter_id", "status", "created_at"),  # oldest queued per adapter
        Index("ix_jobs_version_finished", "version_id", "finished_at"),  # a version's latest ended jobs
        Index("ix_jobs_tenant_finished", "tenant_id", "finished_at"),  # a tenant's jobs ended in a window
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    request: Mapped[dict[str, Any]] = mapped_column()
    routing_key: Mapped[str | None] = mapped_column(String(256), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), default=None)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), default=None, index=True)
    shadow_of: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    custom_id: Mapped[str | None] = mapped_column(String(512), default=None)  # a bulk line's custom_id
    line_no: Mapped[int | None] = mapped_column(Integer, default=None)  # its line in the input file, from 0
    text: Mapped[str | None] = mapped_column(Text, default=None)
    finish_reason: Mapped[str | None] = mapped_column(String(16), default=None)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    queue_wait_s: Mapped[float | None] = mapped_column(Float, default=None)
    run_time_s: Mapped[float | None] = mapped_column(Float, default=None)
    worker_seconds: Mapped[float | None] = mapped_column(Float, default=None)  # its share of its batch's time
    reserved_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # held on its day's quota
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


# --- rollups: what readers count instead of job rows (registry/rollups.py, registry/quotas.py) ----------


class JobCount(Base):
    """Jobs now in each status per tenant, adapter and version, with the tokens recorded on them.

    Moved in the transaction that moves a job (``registry.transitions``), so ``/metrics``,
    ``loraq status`` and the adapter stats read O(groups) rows, not O(jobs). A purged job keeps its count.
    """

    __tablename__ = "job_counts"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class EndedBucket:
    """Jobs that ended in one time bucket (UTC, by ``finished_at``), per tenant, adapter, version,
    terminal status and whether they were shadow copies: counts, tokens, worker-seconds and latency
    sums with how many jobs carried each (a mean is ``queue_wait_s / queue_waits``)."""

    bucket: Mapped[datetime] = mapped_column(primary_key=True)  # the bucket's start
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    shadow: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    worker_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    queue_wait_s: Mapped[float] = mapped_column(Float, default=0.0)
    queue_waits: Mapped[int] = mapped_column(BigInteger, default=0)
    run_time_s: Mapped[float] = mapped_column(Float, default=0.0)
    run_times: Mapped[int] = mapped_column(BigInteger, default=0)


class JobHour(EndedBucket, Base):
    """Ended jobs per UTC hour: the whole hours of a usage report."""

    __tablename__ = "job_hours"


class JobMinute(EndedBucket, Base):
    """Ended jobs per UTC minute: the whole minutes at the edges of a window (the last hour of
    ``loraq status``, a usage report's first and last hours), so no window reads more than two
    minutes of job rows."""

    __tablename__ = "job_minutes"


class RollupBackfill(Base):
    """How far the rollups cover the jobs table (one row, ``id`` 1; ``registry.backfill``).

    A database upgraded across ``0006_rollups`` with jobs in it starts ``pending``: its rollups are
    empty, and gateways count the existing jobs into them in the background, newest first, while
    serving. A job is *covered* (its changes move the rollups) when the state is ``complete``, or
    ``running`` and its id is above ``high`` (created after the backfill began) or at or above
    ``floor`` (already counted). Uncovered jobs are counted as they are when the backfill reaches them.
    """

    __tablename__ = "rollup_backfill"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # pending | running | complete
    high: Mapped[str | None] = mapped_column(String(36), default=None)  # the greatest job id when it began
    floor: Mapped[str | None] = mapped_column(String(36), default=None)  # the least job id counted so far
    counted: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class ShadowAgreement(Base):
    """How often a version, run as a shadow, answered exactly what its primary answered: counted when
    the second of the pair succeeds (``registry.shadows``)."""

    __tablename__ = "shadow_agreement"
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"), primary_key=True)
    compared: Mapped[int] = mapped_column(BigInteger, default=0)
    identical: Mapped[int] = mapped_column(BigInteger, default=0)


class TenantLiveJobs(Base):
    """A tenant's jobs queued or running (shadow copies left out): its live-jobs quota, in O(1)."""

    __tablename__ = "tenant_live_jobs"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)


class TenantDayTokens(Base):
    """Tokens a tenant's jobs created on one UTC day hold: reserved while live, real once ended."""

    __tablename__ = "tenant_day_tokens"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class WebhookSecret(Base):
    """A tenant's signing secret for webhooks (Standard Webhooks ``whsec_``), shown once when created."""

    __tablename__ = "webhook_secrets"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookEndpoint(Base):
    """A tenant's default receiver: every event of the types it asks for goes there."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(JSON)  # empty: every type
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JobWebhook(Base):
    """The receiver one job named at submission (``webhook_url``); most jobs have none, so no column."""

    __tablename__ = "job_webhooks"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)  # String(36)
    url: Mapped[str] = mapped_column(Text)


class WebhookDelivery(Base):
    """One event to one receiver, recorded in the transaction that caused it and before any attempt:
    at-least-once. ``id`` is the event id a receiver sees (``webhook-id``) and drops duplicates by."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(40))
    subject_id: Mapped[str] = mapped_column(String(64))  # the job or batch the event is about
    payload: Mapped[str] = mapped_column(Text)  # the exact body every attempt sends
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_tenant", "tenant_id", "created_at"),
        Index("ix_webhook_deliveries_created", "created_at"),  # the purge's oldest deliveries
    )


# --- retention (registry/retention.py, registry/purge_marks.py, registry/leases.py) -------------------


class PurgeMark(Base):
    """What the purge has deleted of a tenant's jobs, files or batches, as far as reads need to know:
    the newest creation time among the purged ids (ids carry it, ``registry.ids``) and whether an
    id without a time was purged. A missing id at or before the mark reads "expired", after it "not
    found": one row per tenant and kind, however many rows were purged."""

    __tablename__ = "purge_marks"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # job | file | batch
    newest_ms: Mapped[int] = mapped_column(BigInteger, default=0)  # Unix ms
    legacy: Mapped[bool] = mapped_column(Boolean, default=False)


class Lease(Base):
    """A named piece of periodic work that one gateway at a time does (the purge): taken by a
    conditional update, renewed while working, taken over once ``until`` has passed."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64), default=None)
    until: Mapped[datetime | None] = mapped_column(default=None)
