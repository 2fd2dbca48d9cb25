"""rollups: job counts, ended jobs per hour and minute, shadow agreement and the tenants' quota
counters, backfilled from the jobs table in chunks; jobs.reserved_tokens; the indexes of the
bounded reads (oldest queued job per adapter, a version's latest ended jobs)

The backfill reads the jobs table in primary-key order, CHUNK rows at a time (a keyset page per
statement, never one statement over the whole table), sums each page in Python and adds it to the
rollups with upserts, so memory stays flat with millions of rows. It runs in the migration's
transaction: stop the gateways and workers while upgrading (the code before this revision does not
maintain the rollups, so a job changed during the backfill would be miscounted).

Self-contained on purpose: a migration must not follow later changes of the application's code.

Revision ID: 0006_rollups
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import SchemaItem

revision = "0006_rollups"
down_revision = "0005"
branch_labels = None
depends_on = None

CHUNK = 20_000  # jobs per page; Config.attributes["rollups_backfill_chunk"] overrides it (tests use small pages)
LIVE = ("queued", "running")
ENDED = ("succeeded", "failed", "cancelled")
SUMS = (
    "jobs",
    "prompt_tokens",
    "completion_tokens",
    "worker_seconds",
    "queue_wait_s",
    "queue_waits",
    "run_time_s",
    "run_times",
)
FLOATS = ("worker_seconds", "queue_wait_s", "run_time_s")
log = logging.getLogger("alembic.runtime.migration")


def _amount_type(column: str) -> sa.types.TypeEngine[Any]:
    return sa.Float() if column in FLOATS else sa.BigInteger()


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"))


def _owners(table: str) -> list[SchemaItem]:
    return [
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        _fk(table, "tenant_id", "tenants"),
        _fk(table, "adapter_id", "adapters"),
        _fk(table, "version_id", "adapter_versions"),
    ]


def _create_tables() -> None:
    op.create_table(
        "job_counts",
        *_owners("job_counts"),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "adapter_id", "version_id", "status", name=op.f("pk_job_counts")),
    )
    for name in ("job_hours", "job_minutes"):
        op.create_table(
            name,
            sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
            *_owners(name),
            sa.Column("shadow", sa.Boolean(), nullable=False),
            *(sa.Column(c, _amount_type(c), nullable=False) for c in SUMS),
            sa.PrimaryKeyConstraint(
                "bucket", "tenant_id", "adapter_id", "version_id", "status", "shadow", name=op.f(f"pk_{name}")
            ),
        )
    op.create_table(
        "shadow_agreement",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("compared", sa.BigInteger(), nullable=False),
        sa.Column("identical", sa.BigInteger(), nullable=False),
        _fk("shadow_agreement", "version_id", "adapter_versions"),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_shadow_agreement")),
    )
    op.create_table(
        "tenant_live_jobs",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        _fk("tenant_live_jobs", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_live_jobs")),
    )
    op.create_table(
        "tenant_day_tokens",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        _fk("tenant_day_tokens", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("tenant_id", "day", name=op.f("pk_tenant_day_tokens")),
    )


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("reserved_tokens", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_jobs_adapter_status_created", ["adapter_id", "status", "created_at"])
        batch.create_index("ix_jobs_version_finished", ["version_id", "finished_at"])
        batch.create_index("ix_jobs_tenant_finished", ["tenant_id", "finished_at"])
    _create_tables()
    backfill(op.get_bind(), chunk=int(context.config.attributes.get("rollups_backfill_chunk", CHUNK)))


def downgrade() -> None:
    for name in ("tenant_day_tokens", "tenant_live_jobs", "shadow_agreement", "job_minutes", "job_hours", "job_counts"):
        op.drop_table(name)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_tenant_finished")
        batch.drop_index("ix_jobs_version_finished")
        batch.drop_index("ix_jobs_adapter_status_created")
        batch.drop_column("reserved_tokens")


# --- the backfill ---------------------------------------------------------------------------


def _jobs(meta: sa.MetaData) -> sa.Table:
    """The columns of ``jobs`` the backfill reads, as they are at this revision."""
    integers = ("tenant_id", "adapter_id", "version_id", "reserved_tokens", "prompt_tokens", "completion_tokens")
    return sa.Table(
        "jobs",
        meta,
        sa.Column("id", sa.String(36), primary_key=True),
        *(sa.Column(c, sa.Integer()) for c in integers),
        sa.Column("status", sa.String(16)),
        sa.Column("shadow_of", sa.String(36)),
        sa.Column("text", sa.Text()),
        *(sa.Column(c, sa.Float()) for c in FLOATS),
        *(sa.Column(c, sa.DateTime(timezone=True)) for c in ("created_at", "finished_at")),
    )


KEY_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "bucket": sa.DateTime(timezone=True),
    "day": sa.Date(),
    "shadow": sa.Boolean(),
    "status": sa.String(16),
}
OWNERS = ("tenant_id", "adapter_id", "version_id", "status")
KEYS = {
    "job_counts": OWNERS,
    "job_hours": ("bucket", *OWNERS, "shadow"),
    "job_minutes": ("bucket", *OWNERS, "shadow"),
    "shadow_agreement": ("version_id",),
    "tenant_live_jobs": ("tenant_id",),
    "tenant_day_tokens": ("tenant_id", "day"),
}
AMOUNTS = {
    "job_counts": ("jobs", "prompt_tokens", "completion_tokens"),
    "job_hours": SUMS,
    "job_minutes": SUMS,
    "shadow_agreement": ("compared", "identical"),
    "tenant_live_jobs": ("jobs",),
    "tenant_day_tokens": ("tokens",),
}
Deltas = dict[str, dict[tuple[Any, ...], dict[str, float]]]
FLUSH_KEYS = 50_000  # rollup rows held in memory before they are written
PAGE_COLUMNS = (  # what _page_sums unpacks, in this order
    "tenant_id",
    "adapter_id",
    "version_id",
    "status",
    "shadow_of",
    "created_at",
    "finished_at",
    "prompt_tokens",
    "completion_tokens",
    "worker_seconds",
    "queue_wait_s",
    "run_time_s",
    "reserved_tokens",
)


def backfill(conn: sa.Connection, *, chunk: int) -> None:
    """Sum every job into the rollups, ``chunk`` rows (one primary-key page) at a time. Sums are held
    across pages and written when FLUSH_KEYS rollup rows are pending: jobs are read in id order, not
    time order, so a page touches most minute buckets and writing per page would upsert them again
    and again."""
    meta = sa.MetaData()
    jobs = _jobs(meta)
    tables = {name: sa.Table(name, meta, *_key_and_amount_columns(name)) for name in KEYS}
    last, done = "", 0
    columns = [jobs.c[name] for name in PAGE_COLUMNS]
    deltas: Deltas = {name: {} for name in KEYS}
    while True:
        page = conn.execute(
            sa.select(jobs.c.id, *columns).where(jobs.c.id > last).order_by(jobs.c.id).limit(chunk)
        ).all()
        if not page:
            break
        _spread(deltas, _page_sums([row[1:] for row in page]))
        _agreement(conn, jobs, deltas, page)
        last, done = page[-1][0], done + len(page)
        if sum(map(len, deltas.values())) >= FLUSH_KEYS:
            _flush(conn, tables, deltas)
        log.info("rollups backfill: %d jobs counted", done)
    _flush(conn, tables, deltas)


def _flush(conn: sa.Connection, tables: dict[str, sa.Table], deltas: Deltas) -> None:
    for name, rows in deltas.items():
        _add(conn, tables[name], rows, key=KEYS[name])
        rows.clear()


def _key_and_amount_columns(name: str) -> list[sa.Column[Any]]:
    keys: list[sa.Column[Any]] = [sa.Column(c, KEY_TYPES.get(c, sa.Integer())) for c in KEYS[name]]
    return keys + [sa.Column(c, _amount_type(c)) for c in AMOUNTS[name]]


def _bump(deltas: Deltas, table: str, key: tuple[Any, ...], amounts: Sequence[float]) -> None:
    row = deltas[table].get(key)
    if row is None:
        row = deltas[table][key] = dict.fromkeys(AMOUNTS[table], 0)
    for column, amount in zip(AMOUNTS[table], amounts, strict=True):
        row[column] += amount


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _page_sums(page: Sequence[Sequence[Any]]) -> dict[tuple[Any, ...], list[float]]:
    """A page's jobs summed per (tenant, adapter, version, status, shadow, ended minute, created day):
    the finest key every rollup is a sum over. Amounts: SUMS, then reserved tokens."""
    out: dict[tuple[Any, ...], list[float]] = {}
    for tenant, adapter, version, status, shadow_of, created, finished, p, c, ws, wait, run, held in page:
        ended = finished is not None and status in ENDED
        minute = _utc(finished).replace(second=0, microsecond=0) if ended else None
        key = (tenant, adapter, version, status, shadow_of is not None, minute, _utc(created).date())
        sums = out.get(key)
        if sums is None:
            sums = out[key] = [0.0] * 9
        sums[0] += 1
        sums[1] += p or 0
        sums[2] += c or 0
        sums[3] += ws or 0.0
        sums[4] += wait or 0.0
        sums[5] += wait is not None
        sums[6] += run or 0.0
        sums[7] += run is not None
        sums[8] += held or 0
    return out


def _spread(deltas: Deltas, sums: dict[tuple[Any, ...], list[float]]) -> None:
    """Add a page's sums to each rollup's pending rows."""
    for (tenant, adapter, version, status, shadow, minute, day), s in sums.items():
        owners = (tenant, adapter, version, status)
        _bump(deltas, "job_counts", owners, s[:3])
        if minute is not None:
            _bump(deltas, "job_minutes", (minute, *owners, shadow), s[:8])
            _bump(deltas, "job_hours", (minute.replace(minute=0), *owners, shadow), s[:8])
        if shadow:
            continue
        if status in LIVE:
            _bump(deltas, "tenant_live_jobs", (tenant,), s[:1])
            _bump(deltas, "tenant_day_tokens", (tenant, day), s[8:])
        else:
            _bump(deltas, "tenant_day_tokens", (tenant, day), [s[1] + s[2]])


def _agreement(conn: sa.Connection, jobs: sa.Table, deltas: Deltas, page: Sequence[sa.Row[Any]]) -> None:
    """The page's shadow copies that succeeded with their primary: compared, identical (two
    primary-key reads of texts, for the page's shadows only)."""
    shadows = {row.id: (row.version_id, row.shadow_of) for row in page if row.shadow_of and row.status == "succeeded"}
    if not shadows:
        return
    wanted = set(shadows) | {primary for _, primary in shadows.values()}
    texts: dict[str, str | None] = {}
    for ids in _batches(sorted(wanted), 500):
        query = sa.select(jobs.c.id, jobs.c.text).where(jobs.c.id.in_(ids), jobs.c.status == "succeeded")
        texts.update((job_id, text) for job_id, text in conn.execute(query))
    for shadow_id, (version_id, primary) in shadows.items():
        if primary in texts:
            text = texts.get(shadow_id)
            _bump(deltas, "shadow_agreement", (version_id,), [1, int(text is not None and text == texts[primary])])


def _batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _add(
    conn: sa.Connection, table: sa.Table, deltas: Mapping[tuple[Any, ...], Mapping[str, float]], *, key: Sequence[str]
) -> None:
    rows = [{**dict(zip(key, k, strict=True)), **v} for k, v in sorted(deltas.items()) if any(v.values())]
    if not rows:
        return
    stmt = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)
    amounts = [c for c in rows[0] if c not in key]
    conn.execute(
        stmt.on_conflict_do_update(index_elements=list(key), set_={c: table.c[c] + stmt.excluded[c] for c in amounts}),
        rows,
    )
