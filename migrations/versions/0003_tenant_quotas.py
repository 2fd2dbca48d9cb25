"""tenant quotas: queued jobs and tokens per day

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("max_queued_jobs", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_tokens_per_day", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_tokens_per_day")
        batch.drop_column("max_queued_jobs")
