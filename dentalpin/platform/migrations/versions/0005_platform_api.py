"""Platform API: reseller plans (seeded), the reseller owning each tenant, and approval
requests for a reseller's destructive operations on a clinic.

Revision ID: 0005_platform_api
Revises: 0004_events
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import Text

revision = "0005_platform_api"
down_revision = "0004_events"
branch_labels = None
depends_on = None

# (name, description, max_tenants, modules, countries); NULL = no limit.
SEED_PLANS = (
    ("starter", "Up to 5 clinics; no country compliance packs", 5, None, "[]"),
    ("standard", "Up to 50 clinics; every module and country pack", 50, None, None),
    ("pro", "Unlimited clinics; every module and country pack", None, None, None),
)


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("max_tenants", sa.Integer(), nullable=True),
        sa.Column("modules", postgresql.JSONB(astext_type=Text()), nullable=True),
        sa.Column("countries", postgresql.JSONB(astext_type=Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "max_tenants is null or max_tenants >= 0", name=op.f("ck_plans_max_tenants_valid")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_plans")),
        schema="platform",
    )
    for name, description, max_tenants, modules, countries in SEED_PLANS:
        op.execute(
            sa.text(
                "insert into platform.plans (name, description, max_tenants, modules, countries) "
                "values (:name, :description, :max_tenants, cast(:modules as jsonb), "
                "cast(:countries as jsonb))"
            ).bindparams(
                name=name,
                description=description,
                max_tenants=max_tenants,
                modules=modules,
                countries=countries,
            )
        )
    # Plans resellers already name (free text until now) become plans without limits, so
    # the foreign key holds and nobody loses what they had.
    op.execute(
        "insert into platform.plans (name, description) "
        "select distinct r.plan, 'carried over (no limits)' from platform.resellers r "
        "where not exists (select 1 from platform.plans p where p.name = r.plan)"
    )
    op.create_foreign_key(
        op.f("fk_resellers_plan_plans"),
        "resellers",
        "plans",
        ["plan"],
        ["name"],
        source_schema="platform",
        referent_schema="platform",
    )
    op.add_column("tenants", sa.Column("reseller_id", sa.UUID(), nullable=True), schema="platform")
    op.create_foreign_key(
        op.f("fk_tenants_reseller_id_resellers"),
        "tenants",
        "resellers",
        ["reseller_id"],
        ["id"],
        source_schema="platform",
        referent_schema="platform",
    )
    op.create_index(
        op.f("ix_tenants_reseller_id"), "tenants", ["reseller_id"], unique=False, schema="platform"
    )
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column(
            "params",
            postgresql.JSONB(astext_type=Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("state", sa.Text(), server_default="pending", nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("reseller_id", sa.UUID(), nullable=True),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_by_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.Column("decided_by_id", sa.UUID(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.CheckConstraint(
            "state in ('pending', 'approved', 'rejected', 'expired')",
            name=op.f("ck_approval_requests_state_valid"),
        ),
        sa.CheckConstraint(
            "kind in ('lifecycle.uninstall', 'tenant.archive')",
            name=op.f("ck_approval_requests_kind_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_approval_requests_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_requests")),
        schema="platform",
    )
    op.create_index(
        "ix_approval_requests_tenant_id_state",
        "approval_requests",
        ["tenant_id", "state"],
        unique=False,
        schema="platform",
    )
    # Clinic admins decide on approval requests: existing admin roles get the permission
    # that new tenants' admin roles are seeded with.
    op.execute(
        "insert into platform.role_permissions (tenant_id, role, permission) "
        "select tenant_id, name, 'platform.approval.manage' from platform.roles "
        "where name = 'admin' and builtin on conflict do nothing"
    )


def downgrade() -> None:
    op.execute(
        "delete from platform.role_permissions where permission = 'platform.approval.manage'"
    )
    op.drop_index(
        "ix_approval_requests_tenant_id_state", table_name="approval_requests", schema="platform"
    )
    op.drop_table("approval_requests", schema="platform")
    op.drop_index(op.f("ix_tenants_reseller_id"), table_name="tenants", schema="platform")
    op.drop_constraint(
        op.f("fk_tenants_reseller_id_resellers"), "tenants", schema="platform", type_="foreignkey"
    )
    op.drop_column("tenants", "reseller_id", schema="platform")
    op.drop_constraint(
        op.f("fk_resellers_plan_plans"), "resellers", schema="platform", type_="foreignkey"
    )
    op.drop_table("plans", schema="platform")
