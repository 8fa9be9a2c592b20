"""Tables of the catalog module: billable treatments, and price lists per location."""

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    Table,
    Text,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import UUID

from dentalpin.platform import module_metadata

metadata = module_metadata()

VAT_TYPES = ("exempt", "general", "reduced", "super_reduced")
"""Spanish VAT classes; dental care is `exempt` (art. 20.Uno.5º LIVA)."""


def _audit_columns() -> list[Column[object]]:
    """Optimistic-concurrency version and timestamps every mutable row carries."""
    return [
        Column("version", Integer, nullable=False, server_default=text("1")),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    ]


items = Table(
    "catalog_items",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("code", Text, nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("category", Text, nullable=False, server_default="general"),
    Column("description", Text),
    Column("default_price", Numeric(10, 2), nullable=False, server_default=text("0")),
    Column("duration_minutes", Integer, nullable=False, server_default=text("30")),
    Column("vat_type", Text, nullable=False, server_default="exempt"),
    Column("active", Boolean, nullable=False, server_default=true()),
    *_audit_columns(),
    CheckConstraint("default_price >= 0", name="default_price_not_negative"),
    CheckConstraint("duration_minutes > 0", name="duration_positive"),
    CheckConstraint(
        "vat_type in ('exempt', 'general', 'reduced', 'super_reduced')", name="vat_type_valid"
    ),
    Index("ix_catalog_items_category", "category"),
)

price_lists = Table(
    "catalog_price_lists",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("name", Text, nullable=False),
    Column("location_id", UUID(as_uuid=True), ForeignKey("locations_locations.id")),
    Column("active", Boolean, nullable=False, server_default=true()),
    *_audit_columns(),
    # A location has at most one price list; lists without a location are named tariffs.
    Index(
        "uq_catalog_price_lists_location_id",
        "location_id",
        unique=True,
        postgresql_where=text("location_id is not null"),
    ),
)

prices = Table(
    "catalog_prices",
    metadata,
    Column(
        "price_list_id",
        UUID(as_uuid=True),
        ForeignKey("catalog_price_lists.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "item_id",
        UUID(as_uuid=True),
        ForeignKey("catalog_items.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("price", Numeric(10, 2), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("price >= 0", name="price_not_negative"),
    Index("ix_catalog_prices_item_id", "item_id"),
)
