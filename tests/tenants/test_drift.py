from __future__ import annotations

from sqlalchemy import text

from dentalpin.tenants import create_tenant, find_drift, module_states
from tests.conftest import unique_slug


async def test_drift_is_found_and_reconciled(fresh_platform):
    clean = await create_tenant(fresh_platform, unique_slug("clean"))
    edited = await create_tenant(fresh_platform, unique_slug("edited"))
    gone = await create_tenant(fresh_platform, unique_slug("gone"))
    async with fresh_platform.db.engine.begin() as conn:
        await conn.execute(
            text(
                f"update \"{edited.schema_name}\".alembic_version_fx_people set version_num = 'fxp_0001'"
            )
        )
        await conn.execute(text(f'drop schema "{gone.schema_name}" cascade'))

    drifts = await find_drift(fresh_platform)
    by_tenant = {d.tenant: d for d in drifts}
    assert clean.slug not in by_tenant
    assert by_tenant[edited.slug].actual == "fxp_0001"
    assert by_tenant[edited.slug].recorded == "fxp_0002"
    assert "does not exist" in by_tenant[gone.slug].problem

    await find_drift(fresh_platform, fix=True)
    async with fresh_platform.db.engine.connect() as conn:
        assert (await module_states(conn, edited.id))["fx_people"]["revision"] == "fxp_0001"
    remaining = await find_drift(fresh_platform)
    assert [d.tenant for d in remaining] == [gone.slug]
