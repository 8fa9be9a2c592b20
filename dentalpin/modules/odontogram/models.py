"""Tables of the odontogram module: one append-only log of chart entries per patient.

The current chart is never stored: it is derived from the log (`service.derive_chart`),
so the full history is always there and a correction is a new entry that supersedes an
old one. A trigger refuses UPDATE, DELETE and TRUNCATE on the log.
"""

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from dentalpin.platform import module_metadata

metadata = module_metadata()

# Plain text with CHECK constraints, not PostgreSQL enum types: an enum type lives in each
# tenant's schema with its own OID, and a statement asyncpg prepared for one tenant would
# cast a parameter to the other tenant's type on the same pooled connection.

ENTRY_KINDS = ("condition", "treatment", "void")
"""condition: found on the tooth; treatment: performed (a catalog item), optionally leaving
a condition (a filling...); void: retracts the entry it supersedes."""
SOURCES = ("manual", "treatment_plan")


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} in ({allowed})", name=f"{column}_valid")


entries = Table(
    "odontogram_entries",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("seq", BigInteger, Identity(start=1), nullable=False, unique=True),
    Column("patient_id", UUID(as_uuid=True), ForeignKey("patients_patients.id"), nullable=False),
    Column("kind", Text, nullable=False, server_default="condition"),
    Column("tooth", SmallInteger, nullable=False),
    Column("surfaces", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("condition", Text),  # one of fdi.CONDITIONS, checked by the service
    Column("catalog_item_id", UUID(as_uuid=True), ForeignKey("catalog_items.id")),
    Column("supersedes_id", UUID(as_uuid=True), ForeignKey("odontogram_entries.id")),
    Column("notes", Text),
    Column("source", Text, nullable=False, server_default="manual"),
    Column("source_ref", UUID(as_uuid=True)),
    Column("occurred_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("recorded_by", UUID(as_uuid=True)),
    _one_of("kind", ENTRY_KINDS),
    _one_of("source", SOURCES),
    Index("ix_odontogram_entries_patient_id_seq", "patient_id", "seq"),
    # An entry is superseded at most once: corrections form a chain, never a fork.
    Index(
        "uq_odontogram_entries_supersedes_id",
        "supersedes_id",
        unique=True,
        postgresql_where=text("supersedes_id is not null"),
    ),
)
