"""Add the tables of bulk indexing: indexed files, tasks and their file reports.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _count(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger, nullable=False, server_default="0")


def upgrade() -> None:
    op.create_table(
        "indexed_files",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("sop_instance_uid", sa.Text, nullable=False, server_default=""),
        sa.Column("storage_key", sa.Text, nullable=False, server_default=""),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_indexed_files_sop_instance_uid", "indexed_files", ["sop_instance_uid"])

    op.create_table(
        "ingest_tasks",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("prune", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        _count("files_found"),
        _count("files_indexed"),
        _count("files_skipped"),
        _count("files_failed"),
        _count("files_ignored"),
        _count("files_pending"),
        _count("files_pruned"),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("owner", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_ingest_tasks_status", "ingest_tasks", ["status"])

    op.create_table(
        "ingest_task_files",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "task_pk",
            sa.Integer,
            sa.ForeignKey("ingest_tasks.pk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_ingest_task_files_task_pk", "ingest_task_files", ["task_pk"])


def downgrade() -> None:
    op.drop_table("ingest_task_files")
    op.drop_table("ingest_tasks")
    op.drop_table("indexed_files")
