"""agenda: professionals, working hours, appointments (no double booking), status history

Revision ID: agenda_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "agenda_0001"
down_revision = None
branch_labels = None
depends_on = None
dentalpin_requires = {
    "locations": "locations_0001",
    "patients": "patients_0001",
    "catalog": "catalog_0001",
}

STATUSES = (
    "scheduled",
    "confirmed",
    "checked_in",
    "in_treatment",
    "completed",
    "cancelled",
    "no_show",
)


def _status_check(table: str, column: str) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{s}'" for s in STATUSES)
    return sa.CheckConstraint(f"{column} in ({allowed})", name=f"ck_{table}_{column}_valid")


BLOCKING = "where (status not in ('cancelled', 'no_show'))"


def _audit_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    ]


def _id() -> sa.Column[object]:
    return sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "agenda_professionals",
        _id(),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("color", sa.Text, nullable=False, server_default="#2a9d8f"),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_agenda_professionals"),
        sa.UniqueConstraint("user_id", name="uq_agenda_professionals_user_id"),
        sa.CheckConstraint("color ~ '^#[0-9a-fA-F]{6}$'", name="ck_agenda_professionals_color_hex"),
    )
    op.create_table(
        "agenda_working_hours",
        _id(),
        sa.Column("professional_id", sa.UUID(), nullable=False),
        sa.Column("location_id", sa.UUID(), nullable=False),
        sa.Column("weekday", sa.SmallInteger, nullable=False),
        sa.Column("starts_at", sa.Time, nullable=False),
        sa.Column("ends_at", sa.Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agenda_working_hours"),
        sa.ForeignKeyConstraint(
            ["professional_id"],
            ["agenda_professionals.id"],
            name="fk_agenda_working_hours_professional_id_agenda_professionals",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["location_id"],
            ["locations_locations.id"],
            name="fk_agenda_working_hours_location_id_locations_locations",
        ),
        sa.CheckConstraint("weekday between 1 and 7", name="ck_agenda_working_hours_iso_weekday"),
        sa.CheckConstraint("ends_at > starts_at", name="ck_agenda_working_hours_ends_after_start"),
    )
    op.create_index(
        "ix_agenda_working_hours_location_id_weekday",
        "agenda_working_hours",
        ["location_id", "weekday"],
    )
    op.create_table(
        "agenda_appointments",
        _id(),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("professional_id", sa.UUID(), nullable=False),
        sa.Column("cabinet_id", sa.UUID(), nullable=False),
        sa.Column("location_id", sa.UUID(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="scheduled"),
        sa.Column("notes", sa.Text),
        sa.Column("booked_by", sa.UUID()),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_agenda_appointments"),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients_patients.id"],
            name="fk_agenda_appointments_patient_id_patients_patients",
        ),
        sa.ForeignKeyConstraint(
            ["professional_id"],
            ["agenda_professionals.id"],
            name="fk_agenda_appointments_professional_id_agenda_professionals",
        ),
        sa.ForeignKeyConstraint(
            ["cabinet_id"],
            ["locations_cabinets.id"],
            name="fk_agenda_appointments_cabinet_id_locations_cabinets",
        ),
        sa.ForeignKeyConstraint(
            ["location_id"],
            ["locations_locations.id"],
            name="fk_agenda_appointments_location_id_locations_locations",
        ),
        sa.CheckConstraint("ends_at > starts_at", name="ck_agenda_appointments_ends_after_start"),
        _status_check("agenda_appointments", "status"),
    )
    # No double booking, enforced by PostgreSQL whatever races the application loses
    # (btree_gist gives uuid an equality operator class for GiST).
    for column in ("professional", "cabinet"):
        op.execute(
            f"alter table agenda_appointments add constraint ex_agenda_appointments_{column} "
            f"exclude using gist ({column}_id with =, "
            f"tstzrange(starts_at, ends_at, '[)') with &&) {BLOCKING}"
        )
    op.create_index(
        "ix_agenda_appointments_location_id_starts_at",
        "agenda_appointments",
        ["location_id", "starts_at"],
    )
    op.create_index(
        "ix_agenda_appointments_patient_id_starts_at",
        "agenda_appointments",
        ["patient_id", "starts_at"],
    )
    op.create_table(
        "agenda_appointment_items",
        sa.Column("appointment_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.SmallInteger, nullable=False),
        sa.Column("item_id", sa.UUID(), nullable=False),
        sa.PrimaryKeyConstraint("appointment_id", "position", name="pk_agenda_appointment_items"),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["agenda_appointments.id"],
            name="fk_agenda_appointment_items_appointment_id_agenda_appointments",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["catalog_items.id"],
            name="fk_agenda_appointment_items_item_id_catalog_items",
        ),
    )
    op.create_table(
        "agenda_status_changes",
        _id(),
        sa.Column("appointment_id", sa.UUID(), nullable=False),
        sa.Column("from_status", sa.Text),
        sa.Column("to_status", sa.Text, nullable=False),
        sa.Column("changed_by", sa.UUID()),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("reason", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_agenda_status_changes"),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["agenda_appointments.id"],
            name="fk_agenda_status_changes_appointment_id_agenda_appointments",
            ondelete="CASCADE",
        ),
        _status_check("agenda_status_changes", "from_status"),
        _status_check("agenda_status_changes", "to_status"),
    )
    op.create_index(
        "ix_agenda_status_changes_appointment_id_changed_at",
        "agenda_status_changes",
        ["appointment_id", "changed_at"],
    )


def downgrade() -> None:
    op.drop_table("agenda_status_changes")
    op.drop_table("agenda_appointment_items")
    op.drop_table("agenda_appointments")
    op.drop_table("agenda_working_hours")
    op.drop_table("agenda_professionals")
