"""Tenant-scoped database access, enforced by PostgreSQL itself."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine

from dentalpin.platform._db import Database, TenantScope, is_stale_statement
from dentalpin.tenants import create_tenant


@pytest.fixture
async def two_tenants(platform):
    from tests.conftest import unique_slug

    a = await create_tenant(platform, unique_slug("iso-a"))
    b = await create_tenant(platform, unique_slug("iso-b"))
    async with platform.db.tenant(b.scope) as s:
        await s.execute(text("insert into people (name, kind) values ('Secret B', 'patient')"))
    return a, b


async def test_tenant_transaction_sees_only_its_schema(platform, two_tenants):
    a, b = two_tenants
    async with platform.db.tenant(a.scope) as s:
        path = (await s.execute(text("show search_path"))).scalar()
        role = (await s.execute(text("select current_user"))).scalar()
        names = (await s.execute(text("select name from people"))).scalars().all()
    assert path == f'"{a.schema_name}", extensions'
    assert role == a.db_role
    assert "Secret B" not in names


async def test_naming_another_tenants_schema_is_refused_by_postgres(platform, two_tenants):
    a, b = two_tenants
    with pytest.raises(ProgrammingError, match="permission denied for schema"):
        async with platform.db.tenant(a.scope) as s:
            await s.execute(text(f'select * from "{b.schema_name}".people'))
    with pytest.raises(ProgrammingError, match="permission denied"):
        async with platform.db.tenant(a.scope) as s:
            await s.execute(text("select * from platform.tenants"))
    # Writes too, not only reads.
    with pytest.raises(ProgrammingError, match="permission denied for schema"):
        async with platform.db.tenant(a.scope) as s:
            await s.execute(text(f'delete from "{b.schema_name}".people'))
    async with platform.db.tenant(b.scope) as s:
        assert (await s.execute(text("select count(*) from people"))).scalar() >= 2


async def test_tenant_role_cannot_escape_with_set_role_or_ddl(platform, two_tenants):
    a, _ = two_tenants
    with pytest.raises(DBAPIError):
        async with platform.db.tenant(a.scope) as s:
            await s.execute(text("create table sneaky (id int)"))
    with pytest.raises(DBAPIError):
        async with platform.db.tenant(a.scope) as s:
            await s.execute(text(f'set role "{platform.settings.role_prefix}nobody"'))


async def test_nothing_survives_on_the_pooled_connection(platform, two_tenants):
    a, _ = two_tenants
    db = Database(platform.db.url, platform.settings.model_copy(update={"pool_size": 1}))
    try:
        async with db.tenant(a.scope) as s:
            await s.execute(text("select 1 from people limit 1"))
            backend = (await s.execute(text("select pg_backend_pid()"))).scalar()
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("select pg_backend_pid()"))).scalar() == backend
            assert (await conn.execute(text("show search_path"))).scalar() in ('""', "")
            assert (await conn.execute(text("select current_user"))).scalar() != a.db_role
            # No fall-through to a shared schema: an unqualified name fails outside a tenant.
            with pytest.raises(ProgrammingError, match="does not exist"):
                await conn.execute(text("select * from people"))
    finally:
        await db.dispose()


async def test_scope_names_are_validated():
    with pytest.raises(ValueError, match="tenant schema"):
        TenantScope("public", "dp_x")
    with pytest.raises(ValueError, match="tenant schema"):
        TenantScope('t_abc"; drop schema platform; --', "dp_x")
    with pytest.raises(ValueError, match="role"):
        TenantScope("t_abcdefgh", 'x"; drop role postgres; --')


async def test_stale_cached_statement_is_retried_once(platform, two_tenants):
    """Another process's DDL invalidates asyncpg's cached statement; the unit of work reruns."""
    a, _ = two_tenants
    db = Database(platform.db.url, platform.settings.model_copy(update={"pool_size": 1}))
    other = create_async_engine(platform.db.url)
    query = text("select * from people order by id")
    try:
        async with db.tenant(a.scope) as s:
            await s.execute(query)  # prepared and cached on the only pooled connection
        async with other.begin() as conn:
            await conn.execute(text(f'alter table "{a.schema_name}".people add column note text'))
        with pytest.raises(DBAPIError) as caught:
            async with db.tenant(a.scope) as s:
                await s.execute(query)
        assert is_stale_statement(caught.value)

        async with db.tenant(a.scope) as s:
            await s.execute(query)  # re-prepare after the dialect cleared its cache
        async with other.begin() as conn:
            await conn.execute(text(f'alter table "{a.schema_name}".people drop column note'))

        async def work(session):
            return (await session.execute(query)).all()

        rows = await db.run_in_tenant(a.scope, work)
        assert rows and "note" not in rows[0]._fields
    finally:
        await db.dispose()
        await other.dispose()


def _pool_of_one(platform, *, alive_bypass_s: float) -> Database:
    settings = {"pool_size": 1, "max_overflow": 0, "db_alive_bypass_s": alive_bypass_s}
    return Database(platform.db.url, platform.settings.model_copy(update=settings))


async def _backend(db: Database) -> int:
    async with db.platform() as s:
        return int((await s.execute(text("select pg_backend_pid()"))).scalar_one())


async def _terminate(platform, pid: int) -> None:
    async with platform.db.engine.connect() as conn:
        await conn.execute(text("select pg_terminate_backend(:p)"), {"p": pid})


async def test_a_pooled_connection_that_died_while_idle_is_replaced_on_checkout(platform):
    """Past the alive-bypass window the pool pings before lending: a server-side kill
    (a restart, an admin) costs the caller nothing."""
    db = _pool_of_one(platform, alive_bypass_s=0)
    try:
        dead = await _backend(db)
        await _terminate(platform, dead)
        assert await _backend(db) != dead  # no error: pinged, found dead, replaced
    finally:
        await db.dispose()


async def test_a_connection_returned_moments_ago_is_lent_without_a_ping(platform):
    """Inside the window there is no ping (the point: no round trips on a busy pool), so a
    connection killed in that moment fails its first statement; that failure invalidates
    the pool, and the next transaction gets a new connection."""
    db = _pool_of_one(platform, alive_bypass_s=60)
    try:
        dead = await _backend(db)
        await _terminate(platform, dead)
        with pytest.raises(DBAPIError):
            await _backend(db)
        assert await _backend(db) != dead
    finally:
        await db.dispose()
