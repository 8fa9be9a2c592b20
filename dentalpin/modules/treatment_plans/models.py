"""Tables of the treatment_plans module: plans and their items, the quote issued at each
proposal (an immutable snapshot), and the patient's acceptance of one quote."""

from sqlalchemy import (
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from dentalpin.platform import module_metadata

metadata = module_metadata()

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


plans = Table(
    "treatment_plans_plans",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("patient_id", UUID(as_uuid=True), ForeignKey("patients_patients.id"), nullable=False),
    Column("title", Text, nullable=False),
    Column("notes", Text),
    Column("dentist_id", UUID(as_uuid=True)),
    Column("status", Text, nullable=False, server_default="draft"),
    Column("created_by", UUID(as_uuid=True)),
    Column("proposed_at", DateTime(timezone=True)),
    Column("accepted_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    Column("close_reason", Text),
    *_audit_columns(),
    _one_of("status", PLAN_STATUSES),
    Index("ix_treatment_plans_plans_patient_id", "patient_id"),
    Index("ix_treatment_plans_plans_status", "status"),
)

items = Table(
    "treatment_plans_items",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "plan_id",
        UUID(as_uuid=True),
        ForeignKey("treatment_plans_plans.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("position", Integer, nullable=False, server_default=text("0")),
    Column("catalog_item_id", UUID(as_uuid=True), ForeignKey("catalog_items.id"), nullable=False),
    Column("description", Text, nullable=False),
    Column("teeth", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("surfaces", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("chart_condition", Text),
    Column("quantity", Integer, nullable=False, server_default=text("1")),
    Column("unit_price", Numeric(10, 2), nullable=False),
    Column("discount_percent", Numeric(5, 2), nullable=False, server_default=text("0")),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("completed_at", DateTime(timezone=True)),
    Column("completed_by", UUID(as_uuid=True)),
    *_audit_columns(),
    _one_of("status", ITEM_STATUSES),
    CheckConstraint("quantity > 0", name="quantity_positive"),
    CheckConstraint("unit_price >= 0", name="unit_price_not_negative"),
    CheckConstraint("discount_percent between 0 and 100", name="discount_percent_range"),
    Index("ix_treatment_plans_items_plan_id", "plan_id"),
)

quotes = Table(
    "treatment_plans_quotes",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("plan_id", UUID(as_uuid=True), ForeignKey("treatment_plans_plans.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("snapshot", JSONB, nullable=False),
    Column("subtotal", Numeric(10, 2), nullable=False),
    Column("discount", Numeric(10, 2), nullable=False),
    Column("total", Numeric(10, 2), nullable=False),
    Column("valid_until", Date),
    Column("created_by", UUID(as_uuid=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    UniqueConstraint("plan_id", "number"),
    Index("ix_treatment_plans_quotes_created_at", "created_at"),
)

acceptances = Table(
    "treatment_plans_acceptances",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("plan_id", UUID(as_uuid=True), ForeignKey("treatment_plans_plans.id"), nullable=False),
    Column("quote_id", UUID(as_uuid=True), ForeignKey("treatment_plans_quotes.id"), nullable=False),
    Column("method", Text, nullable=False, server_default="in_person"),
    Column("accepted_by_name", Text, nullable=False),
    Column("evidence", Text),
    Column("accepted_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("recorded_by", UUID(as_uuid=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    _one_of("method", ACCEPTANCE_METHODS),
    # One acceptance per plan is the status flow's rule (proposed -> accepted happens once).
    Index("ix_treatment_plans_acceptances_plan_id", "plan_id"),
)
