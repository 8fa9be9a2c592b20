"""Verified custom domains are checked again: when and how their last checks went.

Revision ID: 0010_domain_checks
Revises: 0009_mail_queue
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_domain_checks"
down_revision = "0009_mail_queue"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "domains",
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        schema="platform",
    )
    op.add_column(
        "domains",
        sa.Column("failed_checks", sa.Integer(), server_default=sa.text("0"), nullable=False),
        schema="platform",
    )
    op.add_column(
        "domains", sa.Column("last_check_error", sa.Text(), nullable=True), schema="platform"
    )


def downgrade() -> None:
    for column in ("last_check_error", "failed_checks", "checked_at"):
        op.drop_column("domains", column, schema="platform")
