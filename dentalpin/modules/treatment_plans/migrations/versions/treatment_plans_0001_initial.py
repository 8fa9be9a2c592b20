"""treatment_plans_plans, _items, _quotes and _acceptances

Revision ID: treatment_plans_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "treatment_plans_0001"
down_revision = None
branch_labels = None
depends_on = None
dentalpin_requires = {"patients": "patients_0001", "catalog": "catalog_0001"}

PLAN_STATUSES = (
    "draft",
    "proposed",
    "accepted",
    "in_progress",
    "completed",
    "rejected",
    "cancelled",
)
ITEM_STATUSES = ("pending", "completed", "cancelled")
ACCEPTANCE_METHODS = ("signature", "in_person", "email")


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


def _one_of(table: str, column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} in ({allowed})", name=f"ck_{table}_{column}_valid")


def _fk(
    table: str, column: str, target: str, ondelete: str | None = None
) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "treatment_plans_plans",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("notes", sa.Text),
        sa.Column("dentist_id", sa.UUID()),
        sa.Column("status", sa.Text, nullable=False, server_default="draft"),
        sa.Column("created_by", sa.UUID()),
        sa.Column("proposed_at", sa.DateTime(timezone=True)),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("closed_at", sa.DateTime(timezone=True)),
        sa.Column("close_reason", sa.Text),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_treatment_plans_plans"),
        _fk("treatment_plans_plans", "patient_id", "patients_patients"),
        _one_of("treatment_plans_plans", "status", PLAN_STATUSES),
    )
    op.create_index("ix_treatment_plans_plans_patient_id", "treatment_plans_plans", ["patient_id"])
    op.create_index("ix_treatment_plans_plans_status", "treatment_plans_plans", ["status"])
    op.create_table(
        "treatment_plans_items",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("plan_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("catalog_item_id", sa.UUID(), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("teeth", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("surfaces", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("chart_condition", sa.Text),
        sa.Column("quantity", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("unit_price", sa.Numeric(10, 2), nullable=False),
        sa.Column(
            "discount_percent", sa.Numeric(5, 2), nullable=False, server_default=sa.text("0")
        ),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("completed_by", sa.UUID()),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_treatment_plans_items"),
        _fk("treatment_plans_items", "plan_id", "treatment_plans_plans", "CASCADE"),
        _fk("treatment_plans_items", "catalog_item_id", "catalog_items"),
        _one_of("treatment_plans_items", "status", ITEM_STATUSES),
        sa.CheckConstraint("quantity > 0", name="ck_treatment_plans_items_quantity_positive"),
        sa.CheckConstraint(
            "unit_price >= 0", name="ck_treatment_plans_items_unit_price_not_negative"
        ),
        sa.CheckConstraint(
            "discount_percent between 0 and 100",
            name="ck_treatment_plans_items_discount_percent_range",
        ),
    )
    op.create_index("ix_treatment_plans_items_plan_id", "treatment_plans_items", ["plan_id"])
    op.create_table(
        "treatment_plans_quotes",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("plan_id", sa.UUID(), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("snapshot", JSONB, nullable=False),
        sa.Column("subtotal", sa.Numeric(10, 2), nullable=False),
        sa.Column("discount", sa.Numeric(10, 2), nullable=False),
        sa.Column("total", sa.Numeric(10, 2), nullable=False),
        sa.Column("valid_until", sa.Date),
        sa.Column("created_by", sa.UUID()),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("id", name="pk_treatment_plans_quotes"),
        _fk("treatment_plans_quotes", "plan_id", "treatment_plans_plans"),
        sa.UniqueConstraint("plan_id", "number", name="uq_treatment_plans_quotes_plan_id_number"),
    )
    op.create_index(
        "ix_treatment_plans_quotes_created_at", "treatment_plans_quotes", ["created_at"]
    )
    op.create_table(
        "treatment_plans_acceptances",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("plan_id", sa.UUID(), nullable=False),
        sa.Column("quote_id", sa.UUID(), nullable=False),
        sa.Column("method", sa.Text, nullable=False, server_default="in_person"),
        sa.Column("accepted_by_name", sa.Text, nullable=False),
        sa.Column("evidence", sa.Text),
        sa.Column(
            "accepted_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("recorded_by", sa.UUID()),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("id", name="pk_treatment_plans_acceptances"),
        _fk("treatment_plans_acceptances", "plan_id", "treatment_plans_plans"),
        _fk("treatment_plans_acceptances", "quote_id", "treatment_plans_quotes"),
        _one_of("treatment_plans_acceptances", "method", ACCEPTANCE_METHODS),
    )
    op.create_index(
        "ix_treatment_plans_acceptances_plan_id", "treatment_plans_acceptances", ["plan_id"]
    )


def downgrade() -> None:
    op.drop_table("treatment_plans_acceptances")
    op.drop_table("treatment_plans_quotes")
    op.drop_table("treatment_plans_items")
    op.drop_table("treatment_plans_plans")
