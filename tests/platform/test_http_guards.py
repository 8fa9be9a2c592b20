"""Defence in depth in the HTTP layer: undeclared routes stay closed; stale statements retry."""

from __future__ import annotations

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from dentalpin.app import create_app
from dentalpin.platform._db import Database
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.tenants.factory import build_module, platform_with

ROUTER_HOOKS = """
def router(self):
    from fastapi import APIRouter
    from dentalpin.platform import TenantDB, public
    from sqlalchemy import text
    r = APIRouter()
    calls = type(self).calls

    @r.get("/open")
    async def forgot_to_declare():
        return {"leak": True}

    @r.get("/items", dependencies=[public()])
    async def items(db: TenantDB):
        calls.append(1)
        rows = await db.execute(text("select * from guard_items order by id"))
        return [dict(row._mapping) for row in rows]

    return r
"""

REVISION = {
    "id": "g1",
    "upgrade": "op.create_table('guard_items', sa.Column('id', sa.Integer, primary_key=True))\n"
    "op.execute('insert into guard_items values (1), (2)')",
    "downgrade": "op.drop_table('guard_items')",
}


def client(app, slug):
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url=f"http://{slug}.localhost")


async def test_a_route_without_a_declared_permission_is_closed(platform, tmp_path):
    module = build_module(tmp_path, "guarded", [REVISION], hooks=ROUTER_HOOKS)
    module.calls = []
    p = platform_with(platform, module)
    try:
        tenant = await create_tenant(p, unique_slug("guard"), modules=["guarded"])
        async with client(create_app(p), tenant.slug) as http:
            closed = await http.get("/api/v1/guarded/open")
            assert closed.status_code == 403
            assert "declares no permission" in closed.json()["detail"]
            assert "leak" not in closed.text
            assert (await http.get("/api/v1/guarded/items")).json() == [{"id": 1}, {"id": 2}]
    finally:
        await p.close()


async def test_a_request_hit_by_another_process_ddl_is_run_again(platform, tmp_path):
    module = build_module(tmp_path, "guarded", [REVISION], hooks=ROUTER_HOOKS)
    module.calls = []
    base = platform_with(platform, module)
    # One pooled connection, so the second request reuses the first one's cached statement.
    p = Platform(
        base.settings,
        Database(base.db.url, base.settings.model_copy(update={"pool_size": 1, "max_overflow": 0})),
        base.registry,
    )
    other = create_async_engine(p.db.url)
    try:
        tenant = await create_tenant(p, unique_slug("stale"), modules=["guarded"])
        async with client(create_app(p), tenant.slug) as http:
            assert (await http.get("/api/v1/guarded/items")).status_code == 200
            async with other.begin() as conn:
                await conn.execute(
                    text(f'alter table "{tenant.schema_name}".guard_items add column label text')
                )
            module.calls.clear()
            response = await http.get("/api/v1/guarded/items")
            assert response.status_code == 200, response.text
            assert response.json() == [{"id": 1, "label": None}, {"id": 2, "label": None}]
            assert len(module.calls) == 2  # refused once by the stale statement, then re-run
    finally:
        await other.dispose()
        await p.close()
        await base.close()
