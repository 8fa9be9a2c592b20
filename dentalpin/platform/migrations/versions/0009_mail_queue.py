"""The mail queue: every message the platform sends, written in the transaction that made
it, sealed, delivered after the commit and retried with backoff while the mail server is
down (ADR 0023).

Revision ID: 0009_mail_queue
Revises: 0008_clinic_modules
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_mail_queue"
down_revision = "0008_clinic_modules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mail_queue",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("to_address", sa.Text(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=True),
        sa.Column("state", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("give_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state in ('pending', 'sent', 'failed')", name=op.f("ck_mail_queue_state_valid")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mail_queue")),
        schema="platform",
    )
    op.create_index(
        "ix_mail_queue_due",
        "mail_queue",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
        schema="platform",
    )
    op.create_index("ix_mail_queue_created_at", "mail_queue", ["created_at"], schema="platform")


def downgrade() -> None:
    op.drop_index("ix_mail_queue_created_at", table_name="mail_queue", schema="platform")
    op.drop_index("ix_mail_queue_due", table_name="mail_queue", schema="platform")
    op.drop_table("mail_queue", schema="platform")
