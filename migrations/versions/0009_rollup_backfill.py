"""rollup backfill: how far the rollups cover the jobs table, so that existing jobs are counted into
them online, by the gateways while they serve, instead of in the upgrade's transaction

One small table and one row. A database whose jobs nobody has counted (upgraded across
``0006_rollups``, which now creates the rollups empty) starts ``pending``; one whose rollups already
hold counts (``0006_rollups`` as first released backfilled them in its transaction) or that has no
jobs starts ``complete``. See ``registry.backfill`` for how counting and live changes meet.

Revision ID: 0009_rollup_backfill
Revises: 0008_retention
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_rollup_backfill"
down_revision = "0008_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "rollup_backfill",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("high", sa.String(length=36), nullable=True),
        sa.Column("floor", sa.String(length=36), nullable=True),
        sa.Column("counted", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_backfill")),
    )
    conn = op.get_bind()
    has_jobs = conn.execute(sa.text("SELECT 1 FROM jobs LIMIT 1")).first() is not None
    counted = conn.execute(sa.text("SELECT 1 FROM job_counts LIMIT 1")).first() is not None
    state = "pending" if has_jobs and not counted else "complete"
    op.bulk_insert(table, [{"id": 1, "state": state, "counted": 0}])


def downgrade() -> None:
    op.drop_table("rollup_backfill")
