"""Alembic environment of the shared `platform` schema.

`dentalpin migrate` passes an open connection in `config.attributes["connection"]`;
plain `alembic upgrade head` (operators, debugging) builds one from DATABASE_URL.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from dentalpin.platform._settings import get_settings
from dentalpin.platform._tables import PLATFORM_SCHEMA, metadata

VERSION_TABLE = "alembic_version"


def run_on(connection: Connection) -> None:
    connection.execute(text(f"create schema if not exists {PLATFORM_SCHEMA}"))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        version_table_schema=PLATFORM_SCHEMA,
        include_schemas=False,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        # Serialise concurrent `dentalpin migrate` runs (several release pods).
        connection.execute(text("select pg_advisory_xact_lock(hashtext('dentalpin.platform'))"))
        context.run_migrations()


async def run_standalone() -> None:
    engine = create_async_engine(get_settings().sqlalchemy_url())
    async with engine.connect() as conn:
        await conn.run_sync(run_on)
        await conn.commit()
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_on(connection)
elif context.is_offline_mode():
    raise SystemExit("offline mode is not supported: the platform migrates against a live database")
else:
    asyncio.run(run_standalone())
