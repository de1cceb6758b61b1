"""Add the TLS CA, certificate and key files of remote nodes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def upgrade() -> None:
    # batch_alter_table, because SQLite cannot add several columns in one ALTER TABLE.
    with op.batch_alter_table("nodes") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
