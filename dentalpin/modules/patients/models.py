"""Tables of the patients module: patients, their medical alerts and their consents."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from dentalpin.platform import module_metadata

metadata = module_metadata()

DOCUMENT_TYPES = ("dni", "nie", "passport")
SEXES = ("female", "male", "other")
ALERT_KINDS = ("allergy", "medication", "condition")
ALERT_SEVERITIES = ("low", "medium", "high")
CONSENT_KINDS = ("data_processing", "communications")

SEARCH_EXPRESSION = (
    "f_unaccent(lower(given_name || ' ' || family_name))"
    " || ' ' || number::text"
    " || ' ' || coalesce(lower(document_number), '')"
    " || ' ' || coalesce(regexp_replace(phone, '[^0-9]', '', 'g'), '')"
)
"""What the quick search matches: accent- and case-free name, number, document and phone
digits, in one column with one trigram index (f_unaccent is the IMMUTABLE wrapper the
platform creates in the `extensions` schema)."""


def _audit_columns() -> list[Column[object]]:
    """Optimistic-concurrency version and timestamps every mutable row carries."""
    return [
        Column("version", Integer, nullable=False, server_default=text("1")),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    ]


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} in ({allowed})", name=f"{column}_valid")


patients = Table(
    "patients_patients",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("number", BigInteger, Identity(start=1), nullable=False, unique=True),
    Column("given_name", Text, nullable=False),
    Column("family_name", Text, nullable=False),
    Column("birth_date", Date),
    Column("sex", Text),
    Column("phone", Text),
    Column("email", Text),
    Column("document_type", Text),
    Column("document_number", Text),
    Column("guardian_patient_id", UUID(as_uuid=True), ForeignKey("patients_patients.id")),
    Column("guardian_relationship", Text),
    Column("address_line", Text),
    Column("postal_code", Text),
    Column("city", Text),
    Column("province", Text),
    Column("country", Text, nullable=False, server_default="ES"),
    Column("notes", Text),
    Column("archived_at", DateTime(timezone=True)),
    Column("search", Text, Computed(SEARCH_EXPRESSION, persisted=True), nullable=False),
    *_audit_columns(),
    _one_of("sex", SEXES),
    _one_of("document_type", DOCUMENT_TYPES),
    CheckConstraint(
        "(document_type is null) = (document_number is null)", name="document_complete"
    ),
    CheckConstraint("guardian_patient_id <> id", name="guardian_not_self"),
    Index(
        "uq_patients_patients_document",
        "document_type",
        "document_number",
        unique=True,
        postgresql_where=text("document_number is not null"),
    ),
    Index(
        "ix_patients_patients_search",
        "search",
        postgresql_using="gin",
        postgresql_ops={"search": "gin_trgm_ops"},
    ),
    Index("ix_patients_patients_family_name_given_name", "family_name", "given_name"),
    Index("ix_patients_patients_guardian_patient_id", "guardian_patient_id"),
)

alerts = Table(
    "patients_alerts",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("patient_id", UUID(as_uuid=True), ForeignKey("patients_patients.id"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("severity", Text, nullable=False, server_default="medium"),
    Column("recorded_by", UUID(as_uuid=True)),
    Column("resolved_at", DateTime(timezone=True)),
    *_audit_columns(),
    _one_of("kind", ALERT_KINDS),
    _one_of("severity", ALERT_SEVERITIES),
    Index("ix_patients_alerts_patient_id", "patient_id"),
)

consents = Table(
    "patients_consents",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("patient_id", UUID(as_uuid=True), ForeignKey("patients_patients.id"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("recorded_by", UUID(as_uuid=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("note", Text),
    _one_of("kind", CONSENT_KINDS),
    # Consents are an append-only history: the latest row per kind is the current answer.
    Index("ix_patients_consents_patient_id_kind", "patient_id", "kind", "recorded_at"),
)
