"""Platform revisions in tests: the platform schema as an older release left it."""

from __future__ import annotations

from alembic import command
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.tenants._fleet import alembic_config


async def downgrade_platform(conn: AsyncConnection, revision: str) -> None:
    """Run the platform's revisions down to `revision` on `conn`; the caller commits."""

    def downgrade(sync_conn: object) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync_conn
        command.downgrade(config, revision)

    await conn.run_sync(downgrade)
