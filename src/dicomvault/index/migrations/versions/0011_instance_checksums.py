"""Add the SHA-256 checksum of each stored instance, recorded at ingest.

The column is nullable: instances indexed before this revision have no
checksum, and ``dicomvault fsck --verify-checksums`` counts them as
unverified.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("sha256", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("sha256")
