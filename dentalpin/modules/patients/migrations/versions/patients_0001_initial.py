"""patients_patients (with its trigram search column), patients_alerts, patients_consents

Revision ID: patients_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "patients_0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copy of models.SEARCH_EXPRESSION at this revision (a later change is a new revision).
SEARCH_EXPRESSION = (
    "f_unaccent(lower(given_name || ' ' || family_name))"
    " || ' ' || number::text"
    " || ' ' || coalesce(lower(document_number), '')"
    " || ' ' || coalesce(regexp_replace(phone, '[^0-9]', '', 'g'), '')"
)


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
        "patients_patients",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("number", sa.BigInteger, sa.Identity(start=1), nullable=False),
        sa.Column("given_name", sa.Text, nullable=False),
        sa.Column("family_name", sa.Text, nullable=False),
        sa.Column("birth_date", sa.Date),
        sa.Column("sex", sa.Text),
        sa.Column("phone", sa.Text),
        sa.Column("email", sa.Text),
        sa.Column("document_type", sa.Text),
        sa.Column("document_number", sa.Text),
        sa.Column("guardian_patient_id", sa.UUID()),
        sa.Column("guardian_relationship", sa.Text),
        sa.Column("address_line", sa.Text),
        sa.Column("postal_code", sa.Text),
        sa.Column("city", sa.Text),
        sa.Column("province", sa.Text),
        sa.Column("country", sa.Text, nullable=False, server_default="ES"),
        sa.Column("notes", sa.Text),
        sa.Column("archived_at", sa.DateTime(timezone=True)),
        sa.Column(
            "search", sa.Text, sa.Computed(SEARCH_EXPRESSION, persisted=True), nullable=False
        ),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_patients_patients"),
        sa.UniqueConstraint("number", name="uq_patients_patients_number"),
        sa.ForeignKeyConstraint(
            ["guardian_patient_id"],
            ["patients_patients.id"],
            name="fk_patients_patients_guardian_patient_id_patients_patients",
        ),
        sa.CheckConstraint(
            "sex in ('female', 'male', 'other')", name="ck_patients_patients_sex_valid"
        ),
        sa.CheckConstraint(
            "document_type in ('dni', 'nie', 'passport')",
            name="ck_patients_patients_document_type_valid",
        ),
        sa.CheckConstraint(
            "(document_type is null) = (document_number is null)",
            name="ck_patients_patients_document_complete",
        ),
        sa.CheckConstraint(
            "guardian_patient_id <> id", name="ck_patients_patients_guardian_not_self"
        ),
    )
    op.create_index(
        "uq_patients_patients_document",
        "patients_patients",
        ["document_type", "document_number"],
        unique=True,
        postgresql_where=sa.text("document_number is not null"),
    )
    # gin_trgm_ops resolves through the tenant's search path to the shared `extensions` schema.
    op.create_index(
        "ix_patients_patients_search",
        "patients_patients",
        ["search"],
        postgresql_using="gin",
        postgresql_ops={"search": "gin_trgm_ops"},
    )
    op.create_index(
        "ix_patients_patients_family_name_given_name",
        "patients_patients",
        ["family_name", "given_name"],
    )
    op.create_index(
        "ix_patients_patients_guardian_patient_id", "patients_patients", ["guardian_patient_id"]
    )
    op.create_table(
        "patients_alerts",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("severity", sa.Text, nullable=False, server_default="medium"),
        sa.Column("recorded_by", sa.UUID()),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_patients_alerts"),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients_patients.id"],
            name="fk_patients_alerts_patient_id_patients_patients",
        ),
        sa.CheckConstraint(
            "kind in ('allergy', 'medication', 'condition')", name="ck_patients_alerts_kind_valid"
        ),
        sa.CheckConstraint(
            "severity in ('low', 'medium', 'high')", name="ck_patients_alerts_severity_valid"
        ),
    )
    op.create_index("ix_patients_alerts_patient_id", "patients_alerts", ["patient_id"])
    op.create_table(
        "patients_consents",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("granted", sa.Boolean, nullable=False),
        sa.Column("recorded_by", sa.UUID(), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=NOW,
        ),
        sa.Column("note", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_patients_consents"),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients_patients.id"],
            name="fk_patients_consents_patient_id_patients_patients",
        ),
        sa.CheckConstraint(
            "kind in ('data_processing', 'communications')", name="ck_patients_consents_kind_valid"
        ),
    )
    op.create_index(
        "ix_patients_consents_patient_id_kind",
        "patients_consents",
        ["patient_id", "kind", "recorded_at"],
    )


def downgrade() -> None:
    op.drop_table("patients_consents")
    op.drop_table("patients_alerts")
    op.drop_table("patients_patients")
