"""file expiry: a file's ``expires_at`` (OpenAI's file object field), set on a batch's output and
error files when the batch has ``output_expires_after``

One nullable column. The files of batches that ended before this migration with an output expiry
get it from their batch (one UPDATE over those batches' files, a few rows per batch).

Revision ID: 0010_file_expiry
Revises: 0009_rollup_backfill
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_file_expiry"
down_revision = "0009_rollup_backfill"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("files", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    files = sa.table("files", sa.column("id", sa.String()), sa.column("expires_at", sa.DateTime(timezone=True)))
    batches = sa.table(
        "batches",
        sa.column("output_file_id", sa.String()),
        sa.column("error_file_id", sa.String()),
        sa.column("output_expires_at", sa.DateTime(timezone=True)),
    )
    for column in (batches.c.output_file_id, batches.c.error_file_id):
        expiry = (
            sa.select(batches.c.output_expires_at)
            .where(column == files.c.id, batches.c.output_expires_at.is_not(None))
            .scalar_subquery()
        )
        owned = sa.select(column).where(column.is_not(None), batches.c.output_expires_at.is_not(None))
        op.execute(sa.update(files).where(files.c.id.in_(owned)).values(expires_at=expiry))


def downgrade() -> None:
    # Not a batch (copy-and-rename) operation: on SQLite that drops ``files``, which batches reference.
    # SQLite has dropped a column in place since 3.35 (2021).
    op.execute("ALTER TABLE files DROP COLUMN expires_at")
