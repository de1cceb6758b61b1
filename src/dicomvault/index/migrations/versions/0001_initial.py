"""Create the patient, study, series and instance tables.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _text(name: str) -> sa.Column[str]:
    return sa.Column(name, sa.Text, nullable=False, server_default="")


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("patient_key", sa.Text, nullable=False, unique=True),
        _text("patient_id"),
        _text("issuer_of_patient_id"),
        _text("patient_name"),
        _text("patient_name_match"),
        sa.Column("patient_birth_date", sa.Text, nullable=False, server_default=""),
        sa.Column("patient_sex", sa.Text, nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_patients_patient_id", "patients", ["patient_id"])
    op.create_index("ix_patients_patient_name_match", "patients", ["patient_name_match"])

    op.create_table(
        "studies",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("patient_pk", sa.Integer, sa.ForeignKey("patients.pk"), nullable=False),
        sa.Column("study_instance_uid", sa.Text, nullable=False, unique=True),
        sa.Column("study_date", sa.Text, nullable=False, server_default=""),
        _text("study_time"),
        sa.Column("study_time_match", sa.Text, nullable=False, server_default=""),
        _text("accession_number"),
        _text("study_id"),
        _text("study_description"),
        _text("referring_physician_name"),
        _text("referring_physician_name_match"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_studies_patient_pk", "studies", ["patient_pk"])
    op.create_index("ix_studies_study_date", "studies", ["study_date"])
    op.create_index("ix_studies_accession_number", "studies", ["accession_number"])

    op.create_table(
        "series",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_pk", sa.Integer, sa.ForeignKey("studies.pk"), nullable=False),
        sa.Column("series_instance_uid", sa.Text, nullable=False, unique=True),
        _text("modality"),
        _text("series_number"),
        _text("series_description"),
        sa.Column("series_date", sa.Text, nullable=False, server_default=""),
        _text("series_time"),
        sa.Column("series_time_match", sa.Text, nullable=False, server_default=""),
        _text("body_part_examined"),
        _text("protocol_name"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_series_study_pk", "series", ["study_pk"])
    op.create_index("ix_series_modality", "series", ["modality"])

    op.create_table(
        "instances",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("series_pk", sa.Integer, sa.ForeignKey("series.pk"), nullable=False),
        sa.Column("sop_instance_uid", sa.Text, nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.Text, nullable=False),
        _text("instance_number"),
        sa.Column("content_date", sa.Text, nullable=False, server_default=""),
        _text("content_time"),
        sa.Column("content_time_match", sa.Text, nullable=False, server_default=""),
        _text("acquisition_datetime"),
        sa.Column("acquisition_datetime_match", sa.Text, nullable=False, server_default=""),
        _text("number_of_frames"),
        sa.Column("transfer_syntax_uid", sa.Text, nullable=False),
        _text("specific_character_set"),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("source_ae_title", sa.Text, nullable=False, server_default=""),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("header", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    )
    op.create_index("ix_instances_series_pk", "instances", ["series_pk"])
    op.create_index("ix_instances_sop_class_uid", "instances", ["sop_class_uid"])


def downgrade() -> None:
    op.drop_table("instances")
    op.drop_table("series")
    op.drop_table("studies")
    op.drop_table("patients")
