"""The platform schema: migrations match the table definitions; upgrade is idempotent."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from dentalpin.platform._tables import PLATFORM_SCHEMA, metadata
from dentalpin.tenants import migrate_platform
from dentalpin.tenants._fleet import platform_head


def _diff(conn):
    context = MigrationContext.configure(
        conn,
        opts={
            "include_schemas": True,
            "include_name": lambda name, type_, _parent: (
                type_ != "schema" or name == PLATFORM_SCHEMA
            ),
        },
    )
    return [
        d
        for d in compare_metadata(context, metadata)
        if not (d[0] == "remove_table" and d[1].name == "alembic_version")
    ]


async def test_migrations_match_the_table_definitions(fresh_platform):
    async with fresh_platform.db.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_migrate_is_idempotent_and_creates_the_shared_extensions(fresh_platform):
    assert await migrate_platform(fresh_platform) == platform_head()
    async with fresh_platform.db.engine.connect() as conn:
        extensions = set(
            (
                await conn.execute(
                    text(
                        "select extname from pg_extension where extnamespace = 'extensions'::regnamespace"
                    )
                )
            ).scalars()
        )
        unaccented = (await conn.execute(text("select extensions.f_unaccent('Núñez')"))).scalar()
        volatility = (
            await conn.execute(text("select provolatile from pg_proc where proname = 'f_unaccent'"))
        ).scalar()
        tables_in_extensions = (
            await conn.execute(
                text(
                    "select count(*) from pg_class where relnamespace = 'extensions'::regnamespace "
                    "and relkind = 'r'"
                )
            )
        ).scalar()
    assert {"btree_gist", "pg_trgm", "unaccent"} <= extensions
    assert unaccented == "Nunez" and volatility in ("i", b"i")
    assert tables_in_extensions == 0
