"""Spare schemas: a tenant row may be a `spare`, a schema provisioned in advance (migrations
only) under its final `t_<id>` name, which `create_tenant` claims and seeds.

Revision ID: 0003_spare_schemas
Revises: 0002_identity
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0003_spare_schemas"
down_revision = "0002_identity"
branch_labels = None
depends_on = None

BEFORE = "'provisioning', 'active', 'archiving', 'archived', 'failed'"
AFTER = f"{BEFORE}, 'spare'"


def _status_check(allowed: str) -> None:
    op.drop_constraint(op.f("ck_tenants_status_valid"), "tenants", schema="platform")
    op.create_check_constraint(
        op.f("ck_tenants_status_valid"), "tenants", f"status in ({allowed})", schema="platform"
    )


def upgrade() -> None:
    _status_check(AFTER)


def downgrade() -> None:
    # Spares hold no clinic's data: drop them (their schemas and roles) before narrowing.
    op.execute(
        """
        do $$
        declare spare record;
        begin
            for spare in select schema_name, db_role from platform.tenants
                          where status = 'spare' loop
                execute format('drop schema if exists %I cascade', spare.schema_name);
                if exists (select 1 from pg_roles where rolname = spare.db_role) then
                    execute format('drop owned by %I', spare.db_role);
                    execute format('drop role %I', spare.db_role);
                end if;
            end loop;
            delete from platform.tenants where status = 'spare';
        end
        $$
        """
    )
    _status_check(BEFORE)
