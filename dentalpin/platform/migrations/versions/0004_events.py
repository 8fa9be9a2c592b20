"""Events and periodic jobs: the sweep's index of tenants with pending deliveries, the
dead-letter index, the event kernel (outbox, deliveries, inbox, trigger) in every existing
tenant schema, and the last run of each module's periodic jobs.

New tenants get the kernel when their schema is created (`_kernel.create_kernel`); a later
change to the kernel ships as a platform revision like this one, which walks the tenants.

Revision ID: 0004_events
Revises: 0003_spare_schemas
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from dentalpin.platform._kernel import KERNEL_FUNCTIONS, KERNEL_TABLES, kernel_ddl

revision = "0004_events"
down_revision = "0003_spare_schemas"
branch_labels = None
depends_on = None

GRACE_S = 5.0


def upgrade() -> None:
    op.execute("create sequence platform.event_tenants_seq")
    op.create_table(
        "event_tenants",
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_event_tenants")),
        schema="platform",
    )
    op.create_index(op.f("ix_event_tenants_due_at"), "event_tenants", ["due_at"], schema="platform")
    op.create_table(
        "event_dead_letters",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("event_name", sa.Text(), nullable=False),
        sa.Column("subscriber", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "dead_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_dead_letters")),
        sa.UniqueConstraint(
            "tenant_id", "delivery_id", name=op.f("uq_event_dead_letters_tenant_id_delivery_id")
        ),
        schema="platform",
    )
    op.create_table(
        "periodic_runs",
        sa.Column("module", sa.Text(), nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("module", "job", name=op.f("pk_periodic_runs")),
        schema="platform",
    )
    bind = op.get_bind()
    for (schema,) in bind.execute(
        sa.text(
            "select t.schema_name from platform.tenants t "
            "join pg_namespace n on n.nspname = t.schema_name"
        )
    ):
        for statement in kernel_ddl(schema, GRACE_S):
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    for (schema,) in bind.execute(
        sa.text(
            "select t.schema_name from platform.tenants t "
            "join pg_namespace n on n.nspname = t.schema_name"
        )
    ):
        for table in reversed(KERNEL_TABLES):
            op.execute(f'drop table if exists "{schema}".{table} cascade')
        for function in KERNEL_FUNCTIONS:
            op.execute(f'drop function if exists "{schema}".{function}')
    op.drop_table("periodic_runs", schema="platform")
    op.drop_table("event_dead_letters", schema="platform")
    op.drop_table("event_tenants", schema="platform")
    op.execute("drop sequence platform.event_tenants_seq")
