"""locations_locations and locations_cabinets

Revision ID: locations_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "locations_0001"
down_revision = None
branch_labels = None
depends_on = None


NOW = sa.text("now()")


def _audit_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=NOW,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=NOW,
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "locations_locations",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False, server_default="Europe/Madrid"),
        sa.Column("address_line", sa.Text),
        sa.Column("postal_code", sa.Text),
        sa.Column("city", sa.Text),
        sa.Column("province", sa.Text),
        sa.Column("country", sa.Text, nullable=False, server_default="ES"),
        sa.Column("phone", sa.Text),
        sa.Column("email", sa.Text),
        sa.Column("tax_id", sa.Text),
        sa.Column("tax_name", sa.Text),
        sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("archived_at", sa.DateTime(timezone=True)),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_locations_locations"),
    )
    op.create_index(
        "uq_locations_locations_default",
        "locations_locations",
        ["is_default"],
        unique=True,
        postgresql_where=sa.text("is_default"),
    )
    op.create_index(
        "uq_locations_locations_live_name",
        "locations_locations",
        [sa.text("lower(name)")],
        unique=True,
        postgresql_where=sa.text("archived_at is null"),
    )
    op.create_table(
        "locations_cabinets",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("location_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_locations_cabinets"),
        sa.ForeignKeyConstraint(
            ["location_id"],
            ["locations_locations.id"],
            name="fk_locations_cabinets_location_id_locations_locations",
        ),
    )
    op.create_index(
        "uq_locations_cabinets_location_id_name",
        "locations_cabinets",
        ["location_id", sa.text("lower(name)")],
        unique=True,
    )


def downgrade() -> None:
    op.drop_table("locations_cabinets")
    op.drop_table("locations_locations")
