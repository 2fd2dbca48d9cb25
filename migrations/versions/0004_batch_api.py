"""batch api: resumable ingest of bulk files, line errors, custom ids

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("ingest_offset", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("ingest_done", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("published_lines", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("lease_owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("errors", sa.JSON(), nullable=True))
        batch.create_index("ix_batches_status", ["status"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("custom_id", sa.String(512), nullable=True))
        batch.add_column(sa.Column("line_no", sa.Integer(), nullable=True))
        batch.create_index("ux_jobs_batch_custom_id", ["batch_id", "custom_id"], unique=True)
    op.create_table(
        "batch_line_errors",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("batch_id", sa.String(64), sa.ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(512), nullable=True),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.UniqueConstraint("batch_id", "line_no", name="uq_batch_line_errors_batch_id"),
    )


def downgrade() -> None:
    op.drop_table("batch_line_errors")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ux_jobs_batch_custom_id")
        batch.drop_column("line_no")
        batch.drop_column("custom_id")
    with op.batch_alter_table("batches") as batch:
        batch.drop_index("ix_batches_status")
        for column in ("errors", "expires_at", "lease_until", "lease_owner", "published_lines", "ingest_done"):
            batch.drop_column(column)
        batch.drop_column("ingest_offset")
