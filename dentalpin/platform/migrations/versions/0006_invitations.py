"""Invitations to join a clinic, e-mail links (password reset, e-mail verification),
support grants, and `users.email_verified_at`.

Revision ID: 0006_invitations
Revises: 0005_platform_api
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import Text

revision = "0006_invitations"
down_revision = "0005_platform_api"
branch_labels = None
depends_on = None


def _created_at() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True),
        schema="platform",
    )
    op.create_table(
        "invitations",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("roles", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column(
            "location_ids",
            postgresql.JSONB(astext_type=Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("invited_by", sa.UUID(), nullable=True),
        sa.Column("token_hash", sa.Text(), nullable=False),
        _created_at(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("accepted_by", sa.UUID(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("email = lower(email)", name=op.f("ck_invitations_email_lower")),
        sa.ForeignKeyConstraint(
            ["accepted_by"],
            ["platform.users.id"],
            name=op.f("fk_invitations_accepted_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["invited_by"],
            ["platform.users.id"],
            name=op.f("fk_invitations_invited_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_invitations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invitations_token_hash")),
        schema="platform",
    )
    op.create_index(
        op.f("ix_invitations_tenant_id"), "invitations", ["tenant_id"], schema="platform"
    )
    op.create_table(
        "email_tokens",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        _created_at(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "purpose in ('password_reset', 'email_verification')",
            name=op.f("ck_email_tokens_purpose_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["platform.users.id"],
            name=op.f("fk_email_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_email_tokens_token_hash")),
        schema="platform",
    )
    op.create_index(op.f("ix_email_tokens_user_id"), "email_tokens", ["user_id"], schema="platform")
    op.create_table(
        "support_grants",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("grantee_id", sa.UUID(), nullable=False),
        sa.Column("roles", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("granted_by", sa.UUID(), nullable=True),
        _created_at(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.UUID(), nullable=True),
        sa.CheckConstraint(
            "expires_at > created_at", name=op.f("ck_support_grants_expiry_after_creation")
        ),
        sa.ForeignKeyConstraint(
            ["grantee_id"],
            ["platform.users.id"],
            name=op.f("fk_support_grants_grantee_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_support_grants_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_support_grants")),
        schema="platform",
    )
    op.create_index(
        op.f("ix_support_grants_grantee_id"), "support_grants", ["grantee_id"], schema="platform"
    )
    op.create_index(
        op.f("ix_support_grants_tenant_id"), "support_grants", ["tenant_id"], schema="platform"
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_support_grants_tenant_id"), table_name="support_grants", schema="platform"
    )
    op.drop_index(
        op.f("ix_support_grants_grantee_id"), table_name="support_grants", schema="platform"
    )
    op.drop_table("support_grants", schema="platform")
    op.drop_index(op.f("ix_email_tokens_user_id"), table_name="email_tokens", schema="platform")
    op.drop_table("email_tokens", schema="platform")
    op.drop_index(op.f("ix_invitations_tenant_id"), table_name="invitations", schema="platform")
    op.drop_table("invitations", schema="platform")
    op.drop_column("users", "email_verified_at", schema="platform")
