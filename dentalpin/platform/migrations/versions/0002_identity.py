"""Identity: users, tenant roles and their permissions, memberships, signing keys, refresh
tokens, MFA challenges, login throttling, the append-only audit log, resellers, their
admins and their API clients (OAuth2 client credentials).

Revision ID: 0002_identity
Revises: 0001_platform
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import Text

revision = "0002_identity"
down_revision = "0001_platform"
branch_labels = None
depends_on = None

# The audit log is append-only: PostgreSQL itself refuses to change or remove an entry,
# whoever asks (the login role owns the table; only disabling the trigger, an explicit
# DDL act, would get around it).
APPEND_ONLY = """
create or replace function platform.audit_log_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'platform.audit_log is append-only (% refused)', tg_op
        using errcode = 'insufficient_privilege';
end
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column("tenant_id", sa.UUID(), nullable=True),
        sa.Column("actor_id", sa.UUID(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("ip", sa.Text(), nullable=True),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        schema="platform",
    )
    op.create_index(
        "ix_audit_log_tenant_id_at",
        "audit_log",
        ["tenant_id", "at"],
        unique=False,
        schema="platform",
    )
    op.create_table(
        "auth_throttle",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_auth_throttle")),
        schema="platform",
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text(), nullable=False),
        sa.Column("algorithm", sa.Text(), nullable=False),
        sa.Column("public_jwk", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
        schema="platform",
    )
    op.create_table(
        "users",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), server_default="", nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("is_operator", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("disabled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("totp_secret", sa.Text(), nullable=True),
        sa.Column("totp_enabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
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
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("email = lower(email)", name=op.f("ck_users_email_lower")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        schema="platform",
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column(
            "location_ids",
            postgresql.JSONB(astext_type=Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_memberships_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["platform.users.id"],
            name=op.f("fk_memberships_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "tenant_id", name=op.f("pk_memberships")),
        schema="platform",
    )
    op.create_index(
        op.f("ix_memberships_tenant_id"),
        "memberships",
        ["tenant_id"],
        unique=False,
        schema="platform",
    )
    op.create_table(
        "mfa_challenges",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=True),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "purpose in ('verify', 'enrol')", name=op.f("ck_mfa_challenges_purpose_valid")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_mfa_challenges_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["platform.users.id"],
            name=op.f("fk_mfa_challenges_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mfa_challenges")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_mfa_challenges_token_hash")),
        schema="platform",
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("family_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=True),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("mfa", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_refresh_tokens_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["platform.users.id"],
            name=op.f("fk_refresh_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refresh_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_refresh_tokens_token_hash")),
        schema="platform",
    )
    op.create_index(
        op.f("ix_refresh_tokens_family_id"),
        "refresh_tokens",
        ["family_id"],
        unique=False,
        schema="platform",
    )
    op.create_index(
        op.f("ix_refresh_tokens_user_id"),
        "refresh_tokens",
        ["user_id"],
        unique=False,
        schema="platform",
    )
    op.create_table(
        "roles",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("builtin", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("name ~ '^[a-z][a-z0-9_]{1,39}$'", name=op.f("ck_roles_name_valid")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_roles_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "name", name=op.f("pk_roles")),
        schema="platform",
    )
    op.create_table(
        "membership_roles",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "role"],
            ["platform.roles.tenant_id", "platform.roles.name"],
            name=op.f("fk_membership_roles_tenant_id_role_roles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id", "tenant_id"],
            ["platform.memberships.user_id", "platform.memberships.tenant_id"],
            name=op.f("fk_membership_roles_user_id_tenant_id_memberships"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "tenant_id", "role", name=op.f("pk_membership_roles")),
        schema="platform",
    )
    op.create_table(
        "role_permissions",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("permission", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "role"],
            ["platform.roles.tenant_id", "platform.roles.name"],
            name=op.f("fk_role_permissions_tenant_id_role_roles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "role", "permission", name=op.f("pk_role_permissions")
        ),
        schema="platform",
    )

    op.create_table(
        "resellers",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("plan", sa.Text(), server_default="standard", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resellers")),
        sa.UniqueConstraint("name", name=op.f("uq_resellers_name")),
        schema="platform",
    )
    op.create_table(
        "reseller_admins",
        sa.Column("reseller_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["reseller_id"],
            ["platform.resellers.id"],
            name=op.f("fk_reseller_admins_reseller_id_resellers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["platform.users.id"],
            name=op.f("fk_reseller_admins_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("reseller_id", "user_id", name=op.f("pk_reseller_admins")),
        schema="platform",
    )
    op.create_table(
        "api_clients",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("reseller_id", sa.UUID(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=False),
        sa.Column(
            "scopes",
            postgresql.JSONB(astext_type=Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["reseller_id"],
            ["platform.resellers.id"],
            name=op.f("fk_api_clients_reseller_id_resellers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_clients")),
        schema="platform",
    )
    op.create_index(
        op.f("ix_api_clients_reseller_id"),
        "api_clients",
        ["reseller_id"],
        unique=False,
        schema="platform",
    )

    op.execute(APPEND_ONLY)
    op.execute(
        "create trigger audit_log_no_update_delete before update or delete on platform.audit_log"
        " for each row execute function platform.audit_log_append_only()"
    )
    op.execute(
        "create trigger audit_log_no_truncate before truncate on platform.audit_log"
        " for each statement execute function platform.audit_log_append_only()"
    )


def downgrade() -> None:
    op.execute("drop function platform.audit_log_append_only() cascade")
    op.drop_index(op.f("ix_api_clients_reseller_id"), table_name="api_clients", schema="platform")
    op.drop_table("api_clients", schema="platform")
    op.drop_table("reseller_admins", schema="platform")
    op.drop_table("resellers", schema="platform")
    op.drop_table("role_permissions", schema="platform")
    op.drop_table("membership_roles", schema="platform")
    op.drop_table("roles", schema="platform")
    op.drop_index(op.f("ix_refresh_tokens_user_id"), table_name="refresh_tokens", schema="platform")
    op.drop_index(
        op.f("ix_refresh_tokens_family_id"), table_name="refresh_tokens", schema="platform"
    )
    op.drop_table("refresh_tokens", schema="platform")
    op.drop_table("mfa_challenges", schema="platform")
    op.drop_index(op.f("ix_memberships_tenant_id"), table_name="memberships", schema="platform")
    op.drop_table("memberships", schema="platform")
    op.drop_table("users", schema="platform")
    op.drop_table("signing_keys", schema="platform")
    op.drop_table("auth_throttle", schema="platform")
    op.drop_index("ix_audit_log_tenant_id_at", table_name="audit_log", schema="platform")
    op.drop_table("audit_log", schema="platform")
