"""Let PostgreSQL answer Patient Name wildcard queries from indexes.

In PostgreSQL a b-tree index serves ``LIKE 'DOE^J%'`` only with the C
collation or the ``text_pattern_ops`` operator class, and databases are
usually created with another collation (C.UTF-8, en_US.UTF-8). So the
index on the matching form of Patient Name is rebuilt with
``text_pattern_ops``; equality still uses it. A partial index holds the
names with several component groups (``=``), which a name without groups
may match in any group. With both, a wildcard query that starts with
literal characters reads index entries instead of every patient. SQLite
gets the small partial index only.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

NAME_INDEX = "ix_patients_patient_name_match"
GROUPS_INDEX = "ix_patients_patient_name_groups"
HAS_GROUPS = sa.text("patient_name_match LIKE '%=%'")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(NAME_INDEX, table_name="patients")
        op.create_index(
            NAME_INDEX,
            "patients",
            ["patient_name_match"],
            postgresql_ops={"patient_name_match": "text_pattern_ops"},
        )
    op.create_index(
        GROUPS_INDEX,
        "patients",
        ["patient_name_match"],
        postgresql_where=HAS_GROUPS,
        sqlite_where=HAS_GROUPS,
    )


def downgrade() -> None:
    op.drop_index(GROUPS_INDEX, table_name="patients")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(NAME_INDEX, table_name="patients")
        op.create_index(NAME_INDEX, "patients", ["patient_name_match"])
