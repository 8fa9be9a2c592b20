"""Single sign-on and custom domains: OpenID Connect providers of a clinic, external
identities linked by (issuer, subject), and domain claims that several clinics may make
while only one can be verified.

Revision ID: 0007_sso_domains
Revises: 0006_invitations
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import Text

revision = "0007_sso_domains"
down_revision = "0006_invitations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oidc_providers",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("client_secret", sa.Text(), nullable=False),
        sa.Column(
            "allowed_domains",
            postgresql.JSONB(astext_type=Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name=op.f("fk_oidc_providers_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oidc_providers")),
        sa.UniqueConstraint(
            "tenant_id",
            "issuer",
            "client_id",
            name=op.f("uq_oidc_providers_tenant_id_issuer_client_id"),
        ),
        schema="platform",
    )
    op.create_index(
        op.f("ix_oidc_providers_tenant_id"),
        "oidc_providers",
        ["tenant_id"],
        unique=False,
        schema="platform",
    )
    op.create_table(
        "oidc_identities",
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("provider_id", sa.UUID(), nullable=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["platform.oidc_providers.id"],
            name=op.f("fk_oidc_identities_provider_id_oidc_providers"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["platform.users.id"],
            name=op.f("fk_oidc_identities_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("issuer", "subject", name=op.f("pk_oidc_identities")),
        schema="platform",
    )
    op.create_index(
        op.f("ix_oidc_identities_user_id"),
        "oidc_identities",
        ["user_id"],
        unique=False,
        schema="platform",
    )
    # Domains: a claim per (host name, clinic); at most one verified claim per host name.
    op.drop_constraint(op.f("pk_domains"), "domains", schema="platform", type_="primary")
    op.create_primary_key(
        op.f("pk_domains"), "domains", ["hostname", "tenant_id"], schema="platform"
    )
    op.create_index(
        "uq_domains_verified_hostname",
        "domains",
        ["hostname"],
        unique=True,
        schema="platform",
        postgresql_where=sa.text("verified"),
    )


def downgrade() -> None:
    # Unverified claims of a host name another clinic also claims cannot survive the old
    # one-claim-per-name key: keep the verified (else the oldest) claim.
    op.execute(
        """
        delete from platform.domains d
         using platform.domains keep
         where keep.hostname = d.hostname and keep.tenant_id <> d.tenant_id
           and (keep.verified and not d.verified
                or keep.verified = d.verified
                   and (keep.created_at, keep.tenant_id) < (d.created_at, d.tenant_id))
        """
    )
    op.drop_index("uq_domains_verified_hostname", table_name="domains", schema="platform")
    op.drop_constraint(op.f("pk_domains"), "domains", schema="platform", type_="primary")
    op.create_primary_key(op.f("pk_domains"), "domains", ["hostname"], schema="platform")
    op.drop_index(
        op.f("ix_oidc_identities_user_id"), table_name="oidc_identities", schema="platform"
    )
    op.drop_table("oidc_identities", schema="platform")
    op.drop_index(
        op.f("ix_oidc_providers_tenant_id"), table_name="oidc_providers", schema="platform"
    )
    op.drop_table("oidc_providers", schema="platform")
