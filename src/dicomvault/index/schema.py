"""Tables of the index, as SQLAlchemy Core metadata.

The tables mirror the DICOM hierarchy. Key attributes of each level are
columns (see ``dicomvault.dicom.attributes``); ``*_match`` columns hold the
normalized form used for SQL matching. Each instance row keeps its whole
header as DICOM JSON. Schema changes go through the Alembic migrations in
``migrations/versions``; this module describes the newest revision.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

METADATA = MetaData()

# Columns are unbounded Text: values received from real devices may exceed
# the lengths the standard allows, and the index keeps them as they arrived.
_text = Text

HeaderJSON = JSON().with_variant(JSONB(), "postgresql")

patients = Table(
    "patients",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("patient_key", Text, nullable=False, unique=True),
    Column("patient_id", _text, nullable=False, default=""),
    Column("issuer_of_patient_id", _text, nullable=False, default=""),
    Column("patient_name", _text, nullable=False, default=""),
    Column("patient_name_match", _text, nullable=False, default=""),
    Column("patient_birth_date", Text, nullable=False, default=""),
    Column("patient_sex", Text, nullable=False, default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_patients_patient_id", "patient_id"),
    # text_pattern_ops lets PostgreSQL use the index for LIKE 'prefix%' in
    # any collation. The partial index contains the names with component groups.
    Index(
        "ix_patients_patient_name_match",
        "patient_name_match",
        postgresql_ops={"patient_name_match": "text_pattern_ops"},
    ),
    Index(
        "ix_patients_patient_name_groups",
        "patient_name_match",
        postgresql_where=text("patient_name_match LIKE '%=%'"),
        sqlite_where=text("patient_name_match LIKE '%=%'"),
    ),
)

studies = Table(
    "studies",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("patient_pk", Integer, ForeignKey("patients.pk"), nullable=False),
    Column("study_instance_uid", Text, nullable=False, unique=True),
    Column("study_date", Text, nullable=False, default=""),
    Column("study_time", _text, nullable=False, default=""),
    Column("study_time_match", Text, nullable=False, default=""),
    Column("accession_number", _text, nullable=False, default=""),
    Column("study_id", _text, nullable=False, default=""),
    Column("study_description", _text, nullable=False, default=""),
    Column("referring_physician_name", _text, nullable=False, default=""),
    Column("referring_physician_name_match", _text, nullable=False, default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_studies_patient_pk", "patient_pk"),
    Index("ix_studies_study_date", "study_date"),
    Index("ix_studies_accession_number", "accession_number"),
)

series = Table(
    "series",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("study_pk", Integer, ForeignKey("studies.pk"), nullable=False),
    Column("series_instance_uid", Text, nullable=False, unique=True),
    Column("modality", _text, nullable=False, default=""),
    Column("series_number", _text, nullable=False, default=""),
    Column("series_description", _text, nullable=False, default=""),
    Column("series_date", Text, nullable=False, default=""),
    Column("series_time", _text, nullable=False, default=""),
    Column("series_time_match", Text, nullable=False, default=""),
    Column("body_part_examined", _text, nullable=False, default=""),
    Column("protocol_name", _text, nullable=False, default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_series_study_pk", "study_pk"),
    Index("ix_series_modality", "modality"),
)

instances = Table(
    "instances",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("series_pk", Integer, ForeignKey("series.pk"), nullable=False),
    Column("sop_instance_uid", Text, nullable=False, unique=True),
    Column("sop_class_uid", Text, nullable=False),
    Column("instance_number", _text, nullable=False, default=""),
    Column("content_date", Text, nullable=False, default=""),
    Column("content_time", _text, nullable=False, default=""),
    Column("content_time_match", Text, nullable=False, default=""),
    Column("acquisition_datetime", _text, nullable=False, default=""),
    Column("acquisition_datetime_match", Text, nullable=False, default=""),
    Column("number_of_frames", _text, nullable=False, default=""),
    Column("transfer_syntax_uid", Text, nullable=False),
    Column("specific_character_set", _text, nullable=False, default=""),
    Column("storage_key", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    # SHA-256 of the plain DICOM bytes in hex, recorded at ingest; NULL for
    # instances indexed before checksums were recorded.
    Column("sha256", Text, nullable=True),
    Column("source_ae_title", Text, nullable=False, default=""),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("header", HeaderJSON, nullable=False),
    Index("ix_instances_series_pk", "series_pk"),
    Index("ix_instances_sop_class_uid", "sop_class_uid"),
)

# Remote DICOM nodes: C-MOVE destinations and C-ECHO peers.
nodes = Table(
    "nodes",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("ae_title", Text, nullable=False, unique=True),
    Column("host", Text, nullable=False),
    Column("port", Integer, nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("tls", Boolean, nullable=False, default=False),
    # Absolute paths of PEM files for TLS associations with the node; empty when unused.
    Column("tls_ca_file", Text, nullable=False, default=""),
    Column("tls_cert_file", Text, nullable=False, default=""),
    Column("tls_key_file", Text, nullable=False, default=""),
    # What the node may do when it calls the archive with its AE title.
    Column("allow_store", Boolean, nullable=False, default=True),
    Column("allow_query", Boolean, nullable=False, default=True),
    Column("allow_retrieve", Boolean, nullable=False, default=True),
    # IP addresses and networks the node must call from, separated by commas; empty: any.
    Column("source_addresses", Text, nullable=False, default=""),
    # RFC 4514 name the subject of its TLS client certificate must contain; empty: unchecked.
    Column("tls_client_subject", Text, nullable=False, default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Files indexed from folders (in place or imported), so that a re-run skips
# unchanged files. ``outcome`` is "indexed", "failed" or "ignored" (DICOMDIR).
indexed_files = Table(
    "indexed_files",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("path", Text, nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("mode", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("sop_instance_uid", Text, nullable=False, default=""),
    Column("storage_key", Text, nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The ETag of an object indexed from a bucket; '' for files.
    Column("etag", Text, nullable=False, default=""),
    Index("ix_indexed_files_sop_instance_uid", "sop_instance_uid"),
)

# Indexing tasks with their progress counts; ``owner`` is "host:pid" of the
# process that runs the task.
ingest_tasks = Table(
    "ingest_tasks",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("mode", Text, nullable=False),
    Column("prune", Boolean, nullable=False, default=False),
    Column("status", Text, nullable=False),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("files_found", BigInteger, nullable=False, default=0),
    Column("files_indexed", BigInteger, nullable=False, default=0),
    Column("files_skipped", BigInteger, nullable=False, default=0),
    Column("files_failed", BigInteger, nullable=False, default=0),
    Column("files_ignored", BigInteger, nullable=False, default=0),
    Column("files_pending", BigInteger, nullable=False, default=0),
    Column("files_pruned", BigInteger, nullable=False, default=0),
    Column("message", Text, nullable=False, default=""),
    Column("owner", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # Whether another server process may resume the task when its own stops
    # (tasks queued through a server and bucket tasks), rather than marking
    # it interrupted.
    Column("resumable", Boolean, nullable=False, default=False),
    # Bucket tasks: the last object key listed, and whether the listing ended.
    Column("listed_until", Text, nullable=False, default=""),
    Column("listing_done", Boolean, nullable=False, default=False),
    Index("ix_ingest_tasks_status", "status"),
)

# The objects a bucket task listed, in chunks that any server process may
# claim: ``status`` is "queued", "running" (by ``owner`` until
# ``lease_expires_at``), "done", "failed" or "cancelled". ``jobs`` is a JSON
# list of [object URL, size, ETag].
ingest_task_chunks = Table(
    "ingest_task_chunks",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("task_pk", Integer, ForeignKey("ingest_tasks.pk", ondelete="CASCADE"), nullable=False),
    Column("status", Text, nullable=False),
    Column("jobs", Text, nullable=False),
    Column("job_count", Integer, nullable=False),
    Column("owner", Text, nullable=False, default=""),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Index("ix_ingest_task_chunks_task_pk_status", "task_pk", "status"),
)

# Work that one server process of several holds until ``expires_at``: a
# task it runs ("task:<id>"), a watched folder ("watch:<path>"), the
# periodic maintenance. The holder renews it; another process may take it
# once it expired.
leases = Table(
    "leases",
    METADATA,
    Column("name", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# Files a task reports, with the reason: failed, ignored, still being written
# ("pending"), or gone and removed from the index ("pruned").
ingest_task_files = Table(
    "ingest_task_files",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("task_pk", Integer, ForeignKey("ingest_tasks.pk", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_ingest_task_files_task_pk", "task_pk"),
)

# Users of the console and the HTTP API. ``role`` is "admin" or "user";
# ``password_hash`` is an argon2id hash (PHC string).
users = Table(
    "users",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False, unique=True),
    Column("role", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# API tokens for scripts: only the SHA-256 digest of each token is kept.
api_tokens = Table(
    "api_tokens",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("user_pk", Integer, ForeignKey("users.pk", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("token_digest", Text, nullable=False, unique=True),
    Column("prefix", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Index("ix_api_tokens_user_pk", "user_pk"),
)

# Console sessions, in the database so that every server process can check them.
sessions = Table(
    "sessions",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("session_digest", Text, nullable=False, unique=True),
    Column("user_pk", Integer, ForeignKey("users.pk", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_sessions_user_pk", "user_pk"),
)

# Settings changed through the HTTP API (the console), by dotted name such as
# "dimse.port". They take precedence over the file, the environment and
# command line options at start-up. ``value`` is the setting as JSON text.
saved_settings = Table(
    "saved_settings",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False, unique=True),
    Column("value", Text, nullable=False),
    Column("updated_by", Text, nullable=False, default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The audit trail (dicomvault.audit): one row per security-relevant event,
# modelled on DICOM PS3.15 A.5. ``study_uids`` is backslash-separated;
# ``detail`` is a JSON object as text.
audit_events = Table(
    "audit_events",
    METADATA,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("event_code", Text, nullable=False),
    Column("event_name", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("outcome", Integer, nullable=False),
    Column("actor", Text, nullable=False),
    Column("actor_kind", Text, nullable=False),
    Column("source", Text, nullable=False, default=""),
    Column("study_uids", Text, nullable=False, default=""),
    Column("description", Text, nullable=False),
    Column("detail", Text, nullable=False, default="{}"),
    Index("ix_audit_events_occurred_at", "occurred_at"),
)

TABLES = {
    "patients": patients,
    "studies": studies,
    "series": series,
    "instances": instances,
    "nodes": nodes,
    "indexed_files": indexed_files,
    "ingest_tasks": ingest_tasks,
    "ingest_task_files": ingest_task_files,
    "users": users,
    "api_tokens": api_tokens,
    "sessions": sessions,
    "saved_settings": saved_settings,
    "audit_events": audit_events,
}
