"""Add what several server processes need to share work: leases and chunks of bucket tasks.

``leases`` names the process that holds a piece of work (a task, a watched
folder, the periodic maintenance) until a time. ``ingest_task_chunks``
holds the objects a bucket indexing task listed, in chunks that any
process may claim. Tasks gain whether another process may resume them and
how far their listing got; indexed files gain the ETag of objects.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "ingest_task_chunks",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "task_pk",
            sa.Integer,
            sa.ForeignKey("ingest_tasks.pk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("jobs", sa.Text, nullable=False),
        sa.Column("job_count", sa.Integer, nullable=False),
        sa.Column("owner", sa.Text, nullable=False, server_default=""),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_ingest_task_chunks_task_pk_status", "ingest_task_chunks", ["task_pk", "status"]
    )
    with op.batch_alter_table("ingest_tasks") as batch:
        batch.add_column(
            sa.Column("resumable", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("listed_until", sa.Text, nullable=False, server_default=""))
        batch.add_column(
            sa.Column("listing_done", sa.Boolean, nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("indexed_files") as batch:
        batch.add_column(sa.Column("etag", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("indexed_files") as batch:
        batch.drop_column("etag")
    with op.batch_alter_table("ingest_tasks") as batch:
        batch.drop_column("listing_done")
        batch.drop_column("listed_until")
        batch.drop_column("resumable")
    op.drop_index("ix_ingest_task_chunks_task_pk_status", "ingest_task_chunks")
    op.drop_table("ingest_task_chunks")
    op.drop_table("leases")
