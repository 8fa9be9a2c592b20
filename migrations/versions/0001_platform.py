"""Platform schema: tenants, domains, module catalogue, tenant modules, jobs, archives.

Also the shared `extensions` schema (the only shared schema a tenant session sees)
and the extensions modules may declare in `requires_extensions`.

Revision ID: 0001_platform
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from dentalpin.platform._tables import (
    archives,
    domains,
    job_log,
    jobs,
    modules,
    tenant_modules,
    tenants,
)

revision = "0001_platform"
down_revision = None
branch_labels = None
depends_on = None

TABLES = (tenants, domains, modules, tenant_modules, jobs, job_log, archives)
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
    bind = op.get_bind()
    for table in TABLES:
        table.create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(TABLES):
        table.drop(bind)
    op.execute("drop function if exists extensions.f_unaccent(text)")
    for name in reversed(EXTENSIONS):
        op.execute(f"drop extension if exists {name}")
    op.execute("drop schema if exists extensions")
