"""Tables of the locations module: the clinic's sites and their treatment rooms (cabinets)."""

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    false,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import UUID

from dentalpin.platform import module_metadata

metadata = module_metadata()


def _audit_columns() -> list[Column[object]]:
    """Optimistic-concurrency version and timestamps every mutable row carries."""
    return [
        Column("version", Integer, nullable=False, server_default=text("1")),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    ]


locations = Table(
    "locations_locations",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("name", Text, nullable=False),
    Column("timezone", Text, nullable=False, server_default="Europe/Madrid"),
    Column("address_line", Text),
    Column("postal_code", Text),
    Column("city", Text),
    Column("province", Text),
    Column("country", Text, nullable=False, server_default="ES"),
    Column("phone", Text),
    Column("email", Text),
    Column("tax_id", Text),
    Column("tax_name", Text),
    Column("is_default", Boolean, nullable=False, server_default=false()),
    Column("archived_at", DateTime(timezone=True)),
    *_audit_columns(),
    # One default location per clinic; one live location per name.
    Index(
        "uq_locations_locations_default",
        "is_default",
        unique=True,
        postgresql_where=text("is_default"),
    ),
    Index(
        "uq_locations_locations_live_name",
        text("lower(name)"),
        unique=True,
        postgresql_where=text("archived_at is null"),
    ),
)

cabinets = Table(
    "locations_cabinets",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("location_id", UUID(as_uuid=True), ForeignKey("locations_locations.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("active", Boolean, nullable=False, server_default=true()),
    *_audit_columns(),
    Index(
        "uq_locations_cabinets_location_id_name",
        "location_id",
        text("lower(name)"),
        unique=True,
    ),
)
