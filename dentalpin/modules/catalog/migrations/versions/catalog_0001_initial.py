"""catalog_items, catalog_price_lists and catalog_prices

Revision ID: catalog_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "catalog_0001"
down_revision = None
branch_labels = None
depends_on = None
dentalpin_requires = {"locations": "locations_0001"}


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
        "catalog_items",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("category", sa.Text, nullable=False, server_default="general"),
        sa.Column("description", sa.Text),
        sa.Column("default_price", sa.Numeric(10, 2), nullable=False, server_default=sa.text("0")),
        sa.Column("duration_minutes", sa.Integer, nullable=False, server_default=sa.text("30")),
        sa.Column("vat_type", sa.Text, nullable=False, server_default="exempt"),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_catalog_items"),
        sa.UniqueConstraint("code", name="uq_catalog_items_code"),
        sa.CheckConstraint(
            "default_price >= 0", name="ck_catalog_items_default_price_not_negative"
        ),
        sa.CheckConstraint("duration_minutes > 0", name="ck_catalog_items_duration_positive"),
        sa.CheckConstraint(
            "vat_type in ('exempt', 'general', 'reduced', 'super_reduced')",
            name="ck_catalog_items_vat_type_valid",
        ),
    )
    op.create_index("ix_catalog_items_category", "catalog_items", ["category"])
    op.create_table(
        "catalog_price_lists",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("location_id", sa.UUID()),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_catalog_price_lists"),
        sa.ForeignKeyConstraint(
            ["location_id"],
            ["locations_locations.id"],
            name="fk_catalog_price_lists_location_id_locations_locations",
        ),
    )
    op.create_index(
        "uq_catalog_price_lists_location_id",
        "catalog_price_lists",
        ["location_id"],
        unique=True,
        postgresql_where=sa.text("location_id is not null"),
    )
    op.create_table(
        "catalog_prices",
        sa.Column("price_list_id", sa.UUID(), nullable=False),
        sa.Column("item_id", sa.UUID(), nullable=False),
        sa.Column("price", sa.Numeric(10, 2), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=NOW,
        ),
        sa.PrimaryKeyConstraint("price_list_id", "item_id", name="pk_catalog_prices"),
        sa.ForeignKeyConstraint(
            ["price_list_id"],
            ["catalog_price_lists.id"],
            name="fk_catalog_prices_price_list_id_catalog_price_lists",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["catalog_items.id"],
            name="fk_catalog_prices_item_id_catalog_items",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("price >= 0", name="ck_catalog_prices_price_not_negative"),
    )
    op.create_index("ix_catalog_prices_item_id", "catalog_prices", ["item_id"])


def downgrade() -> None:
    op.drop_table("catalog_prices")
    op.drop_table("catalog_price_lists")
    op.drop_table("catalog_items")
