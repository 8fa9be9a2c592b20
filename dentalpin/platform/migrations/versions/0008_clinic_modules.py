"""Clinic admins manage their own modules: existing clinics' built-in admin roles get
`platform.module.manage`, and the admin permissions of 0006 and 0007 that only new
clinics were seeded with (single sign-on, custom domains, support grants).

Revision ID: 0008_clinic_modules
Revises: 0007_sso_domains
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_clinic_modules"
down_revision = "0007_sso_domains"
branch_labels = None
depends_on = None

# Written out, not imported: a revision must do tomorrow what it did the day it was written.
ADMIN_GRANTS = (
    "platform.module.manage",
    "platform.sso.manage",
    "platform.domain.manage",
    "platform.support.manage",
)


def upgrade() -> None:
    op.execute(
        sa.text(
            "insert into platform.role_permissions (tenant_id, role, permission) "
            "select r.tenant_id, r.name, p "
            "from platform.roles r, unnest(cast(:grants as text[])) p "
            "where r.name = 'admin' and r.builtin on conflict do nothing"
        ).bindparams(grants=list(ADMIN_GRANTS))
    )


def downgrade() -> None:
    op.execute("delete from platform.role_permissions where permission = 'platform.module.manage'")
