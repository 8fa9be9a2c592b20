"""Platform schema: tenants, domains, module catalogue, tenant modules, jobs, archives.

Also the shared `extensions` schema (the only shared schema a tenant session sees)
and the extensions modules may declare in `requires_extensions`.

Revision ID: 0001_platform
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import Text

revision = "0001_platform"
down_revision = None
branch_labels = None
depends_on = None

EXTENSIONS = ("btree_gist", "pg_trgm", "unaccent")


def upgrade() -> None:
    op.execute("create schema if not exists extensions")
    # Tenant roles resolve extension types, operators and functions through this schema.
    op.execute("grant usage on schema extensions to public")
    for name in EXTENSIONS:
        op.execute(f"create extension if not exists {name} with schema extensions")
    # unaccent() is only STABLE (its dictionary could change); indexes need IMMUTABLE.
    op.execute(
        """
        create or replace function extensions.f_unaccent(text) returns text
        language sql immutable parallel safe strict
        as $$ select extensions.unaccent('extensions.unaccent'::regdictionary, $1) $$
        """
    )
    # The application role's default search path is empty: an unqualified name outside a
    # tenant transaction fails instead of falling through to a shared schema.
    op.execute(
        "do $$ begin execute format("
        "'alter role %I in database %I set search_path = ''''', current_user, current_database()"
        "); end $$"
    )
    op.create_table(
        "archives",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("module", sa.Text(), nullable=True),
        sa.Column("version", sa.Text(), nullable=True),
        sa.Column("revision", sa.Text(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("contents", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("restored_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind in ('module', 'tenant')", name=op.f("ck_archives_kind_valid")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archives")),
        schema="platform",
    )
    op.create_index(
        op.f("ix_archives_tenant_id"), "archives", ["tenant_id"], unique=False, schema="platform"
    )
    op.create_table(
        "modules",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column("distribution", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("head_revision", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "state in ('available', 'quarantined', 'missing')", name=op.f("ck_modules_state_valid")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_modules")),
        schema="platform",
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("schema_name", sa.Text(), nullable=False),
        sa.Column("db_role", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("placement", sa.Text(), server_default="default", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("archive_id", sa.UUID(), nullable=True),
        sa.CheckConstraint(
            "status in ('provisioning', 'active', 'archiving', 'archived', 'failed')",
            name=op.f("ck_tenants_status_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("db_role", name=op.f("uq_tenants_db_role")),
        sa.UniqueConstraint("schema_name", name=op.f("uq_tenants_schema_name")),
        schema="platform",
    )
    op.create_index(
        "uq_tenants_live_slug",
        "tenants",
        ["slug"],
        unique=True,
        schema="platform",
        postgresql_where=sa.text("status <> 'archived'"),
    )
    op.create_table(
        "domains",
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("verified", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("verification_token", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("hostname = lower(hostname)", name=op.f("ck_domains_hostname_lower")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_domains_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("hostname", name=op.f("pk_domains")),
        schema="platform",
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=True),
        sa.Column(
            "params",
            postgresql.JSONB(astext_type=Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("progress", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=Text()), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state in ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_state_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_jobs_tenant_id_tenants"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        schema="platform",
    )
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"], unique=False, schema="platform")
    op.create_index(
        "uq_jobs_one_active_per_tenant",
        "jobs",
        ["tenant_id"],
        unique=True,
        schema="platform",
        postgresql_where=sa.text("state in ('queued', 'running') and tenant_id is not null"),
    )
    op.create_table(
        "tenant_modules",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("module", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=True),
        sa.Column("revision", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "settings",
            postgresql.JSONB(astext_type=Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "owned_objects",
            postgresql.JSONB(astext_type=Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("archive_id", sa.UUID(), nullable=True),
        sa.Column("installed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "state in ('installing', 'installed', 'uninstalling', 'uninstalled', 'failed')",
            name=op.f("ck_tenant_modules_state_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_tenant_modules_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "module", name=op.f("pk_tenant_modules")),
        schema="platform",
    )
    op.create_index(
        "ix_tenant_modules_module_revision",
        "tenant_modules",
        ["module", "revision"],
        unique=False,
        schema="platform",
    )
    op.create_table(
        "job_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column(
            "at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["platform.jobs.id"],
            name=op.f("fk_job_log_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_log")),
        schema="platform",
    )
    op.create_index(
        op.f("ix_job_log_job_id"), "job_log", ["job_id"], unique=False, schema="platform"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_job_log_job_id"), table_name="job_log", schema="platform")
    op.drop_table("job_log", schema="platform")
    op.drop_index(
        "ix_tenant_modules_module_revision", table_name="tenant_modules", schema="platform"
    )
    op.drop_table("tenant_modules", schema="platform")
    op.drop_index(
        "uq_jobs_one_active_per_tenant",
        table_name="jobs",
        schema="platform",
        postgresql_where=sa.text("state in ('queued', 'running') and tenant_id is not null"),
    )
    op.drop_index("ix_jobs_created_at", table_name="jobs", schema="platform")
    op.drop_table("jobs", schema="platform")
    op.drop_table("domains", schema="platform")
    op.drop_index(
        "uq_tenants_live_slug",
        table_name="tenants",
        schema="platform",
        postgresql_where=sa.text("status <> 'archived'"),
    )
    op.drop_table("tenants", schema="platform")
    op.drop_table("modules", schema="platform")
    op.drop_index(op.f("ix_archives_tenant_id"), table_name="archives", schema="platform")
    op.drop_table("archives", schema="platform")
    op.execute("drop function if exists extensions.f_unaccent(text)")
    for name in reversed(EXTENSIONS):
        op.execute(f"drop extension if exists {name}")
    op.execute("drop schema if exists extensions")
