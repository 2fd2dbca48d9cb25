"""rollups: job counts, ended jobs per hour and minute, shadow agreement and the tenants' quota
counters; jobs.reserved_tokens; the indexes of the bounded reads (oldest queued job per adapter, a
version's latest ended jobs)

The tables are created empty: no backfill here, so the upgrade does not grow with the jobs table.
Revision ``0009_rollup_backfill`` records that existing jobs are still to be counted, and the
gateways count them in the background while serving (``registry.backfill``). On PostgreSQL the three
indexes on ``jobs`` are built ``CONCURRENTLY`` (outside the migration's transaction), so writers are
not blocked while they build; SQLite has no such build, and its writers wait for them.

Self-contained on purpose: a migration must not follow later changes of the application's code.

Revision ID: 0006_rollups
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

revision = "0006_rollups"
down_revision = "0005"
branch_labels = None
depends_on = None

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


INDEXES = {
    "ix_jobs_adapter_status_created": ["adapter_id", "status", "created_at"],
    "ix_jobs_version_finished": ["version_id", "finished_at"],
    "ix_jobs_tenant_finished": ["tenant_id", "finished_at"],
}


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # a constant default: no table rewrite (PostgreSQL 11+, SQLite)
        batch.add_column(sa.Column("reserved_tokens", sa.Integer(), nullable=False, server_default="0"))
    _create_tables()
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():  # CONCURRENTLY cannot run in a transaction
            for name, columns in INDEXES.items():
                op.create_index(name, "jobs", columns, postgresql_concurrently=True, if_not_exists=True)
    else:
        for name, columns in INDEXES.items():
            op.create_index(name, "jobs", columns)


def downgrade() -> None:
    for name in ("tenant_day_tokens", "tenant_live_jobs", "shadow_agreement", "job_minutes", "job_hours", "job_counts"):
        op.drop_table(name)
    for name in reversed(INDEXES):
        op.drop_index(name, table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reserved_tokens")
