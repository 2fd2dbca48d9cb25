"""retention: purge marks (how reads tell a purged id from one that never existed), the purge's
lease, a batch's output expiry (OpenAI's ``output_expires_after``), and the index of the purge's
oldest webhook deliveries

New tables, two nullable columns and one index: no backfill. The index on ``webhook_deliveries``
is built in the migration's transaction unless it exists: on a large PostgreSQL table, build it
first without blocking writers (``CREATE INDEX CONCURRENTLY ix_webhook_deliveries_created ON
webhook_deliveries (created_at)``).

Revision ID: 0008_retention
Revises: 0007_webhooks
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_retention"
down_revision = "0007_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "purge_marks",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("newest_ms", sa.BigInteger(), nullable=False),
        sa.Column("legacy", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_purge_marks_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("tenant_id", "kind", name=op.f("pk_purge_marks")),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("output_expires_s", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("output_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_batches_output_expires_at", ["output_expires_at"])
    # if_not_exists: an operator may have built it beforehand, CONCURRENTLY (see the docstring)
    op.create_index("ix_webhook_deliveries_created", "webhook_deliveries", ["created_at"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_created", table_name="webhook_deliveries")
    with op.batch_alter_table("batches") as batch:
        batch.drop_index("ix_batches_output_expires_at")
        batch.drop_column("output_expires_at")
        batch.drop_column("output_expires_s")
    op.drop_table("leases")
    op.drop_table("purge_marks")
