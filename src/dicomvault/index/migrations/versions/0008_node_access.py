"""Add what each remote node may do when it calls: permissions and pins.

Existing nodes get every permission and no pins, so that upgrading keeps
what they could do before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

PERMISSION_COLUMNS = ("allow_store", "allow_query", "allow_retrieve")
PIN_COLUMNS = ("source_addresses", "tls_client_subject")


def upgrade() -> None:
    # batch_alter_table, because SQLite cannot add several columns in one ALTER TABLE.
    with op.batch_alter_table("nodes") as batch:
        for name in PERMISSION_COLUMNS:
            batch.add_column(sa.Column(name, sa.Boolean, nullable=False, server_default=sa.true()))
        for name in PIN_COLUMNS:
            batch.add_column(sa.Column(name, sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        for name in reversed((*PERMISSION_COLUMNS, *PIN_COLUMNS)):
            batch.drop_column(name)
