"""Revision 0002_identity: reversible, and the tables it creates are the ones declared."""

from __future__ import annotations

from sqlalchemy import text

from dentalpin.tenants import migrate_platform
from dentalpin.tenants._fleet import platform_head
from tests.platform.revisions import downgrade_platform

IDENTITY_TABLES = {
    "users",
    "roles",
    "role_permissions",
    "memberships",
    "membership_roles",
    "signing_keys",
    "refresh_tokens",
    "mfa_challenges",
    "auth_throttle",
    "audit_log",
    "resellers",
    "reseller_admins",
    "api_clients",
}


async def platform_tables(platform) -> set[str]:
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            text("select tablename from pg_tables where schemaname = 'platform'")
        )
        return set(rows.scalars())


async def test_identity_revision_downgrades_and_upgrades_again(fresh_platform):
    assert await platform_tables(fresh_platform) >= IDENTITY_TABLES

    async with fresh_platform.db.engine.connect() as conn:
        await downgrade_platform(conn, "0001_platform")
        await conn.commit()
        function = await conn.scalar(
            text("select count(*) from pg_proc where proname = 'audit_log_append_only'")
        )
    assert not (IDENTITY_TABLES & await platform_tables(fresh_platform))
    assert function == 0
    assert await migrate_platform(fresh_platform) == platform_head()
    assert await platform_tables(fresh_platform) >= IDENTITY_TABLES
