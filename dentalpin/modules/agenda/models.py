"""Tables of the agenda module: professionals, their working hours, appointments and the
history of every appointment's status.

No double booking is a database rule, not a check-then-insert: two exclusion constraints
(btree_gist) refuse overlapping `tstzrange(starts_at, ends_at, '[)')` for one professional
or one cabinet, ignoring cancelled and no-show appointments, however many requests race.
"""

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    Table,
    Text,
    Time,
    func,
    literal_column,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import UUID, ExcludeConstraint

from dentalpin.platform import module_metadata

metadata = module_metadata()

STATUSES = (
    "scheduled",
    "confirmed",
    "checked_in",
    "in_treatment",
    "completed",
    "cancelled",
    "no_show",
)
FREEING_STATUSES = ("cancelled", "no_show")
"""Appointments in these states no longer hold their slot."""

# Text with a CHECK, not an enum type: an enum made in each tenant schema has its own OID,
# and a statement asyncpg prepared for one tenant would then change result type for the next.
STATUS_CHECK = "{column} in ('" + "', '".join(STATUSES) + "')"

# The predicate both exclusion constraints share: what still occupies its slot.
BLOCKING = "status not in ('cancelled', 'no_show')"
SLOT = func.tstzrange(literal_column("starts_at"), literal_column("ends_at"), "[)")


def _uuid_pk() -> Column[object]:
    return Column(
        "id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )


def _audit_columns() -> list[Column[object]]:
    """Optimistic-concurrency version and timestamps every mutable row carries."""
    return [
        Column("version", Integer, nullable=False, server_default=text("1")),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    ]


professionals = Table(
    "agenda_professionals",
    metadata,
    _uuid_pk(),
    # The member's platform user id: a plain UUID, never a foreign key into `platform`.
    Column("user_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("display_name", Text, nullable=False),
    Column("color", Text, nullable=False, server_default="#2a9d8f"),
    Column("active", Boolean, nullable=False, server_default=true()),
    *_audit_columns(),
    CheckConstraint("color ~ '^#[0-9a-fA-F]{6}$'", name="color_hex"),
)

working_hours = Table(
    "agenda_working_hours",
    metadata,
    _uuid_pk(),
    Column(
        "professional_id",
        UUID(as_uuid=True),
        ForeignKey("agenda_professionals.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("location_id", UUID(as_uuid=True), ForeignKey("locations_locations.id"), nullable=False),
    Column("weekday", SmallInteger, nullable=False),
    Column("starts_at", Time, nullable=False),
    Column("ends_at", Time, nullable=False),
    CheckConstraint("weekday between 1 and 7", name="iso_weekday"),
    CheckConstraint("ends_at > starts_at", name="ends_after_start"),
    Index("ix_agenda_working_hours_location_id_weekday", "location_id", "weekday"),
)

appointments = Table(
    "agenda_appointments",
    metadata,
    _uuid_pk(),
    Column("patient_id", UUID(as_uuid=True), ForeignKey("patients_patients.id"), nullable=False),
    Column(
        "professional_id",
        UUID(as_uuid=True),
        ForeignKey("agenda_professionals.id"),
        nullable=False,
    ),
    Column("cabinet_id", UUID(as_uuid=True), ForeignKey("locations_cabinets.id"), nullable=False),
    Column("location_id", UUID(as_uuid=True), ForeignKey("locations_locations.id"), nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False, server_default="scheduled"),
    Column("notes", Text),
    Column("booked_by", UUID(as_uuid=True)),
    *_audit_columns(),
    CheckConstraint("ends_at > starts_at", name="ends_after_start"),
    CheckConstraint(STATUS_CHECK.format(column="status"), name="status_valid"),
    ExcludeConstraint(
        (literal_column("professional_id"), "="),
        (SLOT, "&&"),
        name="ex_agenda_appointments_professional",
        using="gist",
        where=text(BLOCKING),
    ),
    ExcludeConstraint(
        (literal_column("cabinet_id"), "="),
        (SLOT, "&&"),
        name="ex_agenda_appointments_cabinet",
        using="gist",
        where=text(BLOCKING),
    ),
    Index("ix_agenda_appointments_location_id_starts_at", "location_id", "starts_at"),
    Index("ix_agenda_appointments_patient_id_starts_at", "patient_id", "starts_at"),
)

appointment_items = Table(
    "agenda_appointment_items",
    metadata,
    Column(
        "appointment_id",
        UUID(as_uuid=True),
        ForeignKey("agenda_appointments.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", SmallInteger, primary_key=True),
    Column("item_id", UUID(as_uuid=True), ForeignKey("catalog_items.id"), nullable=False),
)

status_changes = Table(
    "agenda_status_changes",
    metadata,
    _uuid_pk(),
    Column(
        "appointment_id",
        UUID(as_uuid=True),
        ForeignKey("agenda_appointments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("from_status", Text),
    Column("to_status", Text, nullable=False),
    Column("changed_by", UUID(as_uuid=True)),
    Column("changed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("reason", Text),
    CheckConstraint(STATUS_CHECK.format(column="from_status"), name="from_status_valid"),
    CheckConstraint(STATUS_CHECK.format(column="to_status"), name="to_status_valid"),
    Index("ix_agenda_status_changes_appointment_id_changed_at", "appointment_id", "changed_at"),
)
