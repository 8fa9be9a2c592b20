"""Spare schemas (DESIGN §4 b): claimed tenants are identical to ones made from nothing."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel
from sqlalchemy import text

from dentalpin.app import _lookup
from dentalpin.platform import Conflict, NotFound
from dentalpin.platform._jobs import executor_of, submit
from dentalpin.tenants import (
    all_tenants,
    create_tenant,
    find_drift,
    find_tenant,
    module_states,
    run_locked,
    tenants_behind,
    upgrade_fleet,
)
from dentalpin.tenants._catalogue import lock_tenant
from dentalpin.tenants._introspect import describe_schema, schema_exists
from dentalpin.tenants._spares import claim_spare, fill_spares, make_spare, spare_pool
from tests.conftest import unique_slug
from tests.tenants.factory import build_module, platform_with
from tests.tenants.test_fleet import REV1, REV2


async def picture(platform, tenant):
    """Everything provisioning decides: schema objects, module rows, roles, seeded rows."""
    async with platform.db.engine.connect() as conn:
        schema = await describe_schema(conn, tenant.schema_name)
        states = await module_states(conn, tenant.id)
        roles = (
            await conn.execute(
                text(
                    "select r.name, r.description, r.builtin, "
                    "       array_agg(p.permission order by p.permission) as permissions "
                    "  from platform.roles r left join platform.role_permissions p "
                    "    on p.tenant_id = r.tenant_id and p.role = r.name "
                    " where r.tenant_id = :t group by r.name, r.description, r.builtin "
                    " order by r.name"
                ),
                {"t": tenant.id},
            )
        ).all()
        people = (
            await conn.execute(
                text(f'select id, name, kind from "{tenant.schema_name}".people order by id')
            )
        ).all()
    return {"schema": schema, "states": states, "roles": roles, "people": people}


async def test_a_claimed_spare_is_identical_to_a_tenant_made_from_nothing(fresh_platform):
    platform = fresh_platform
    assert await fill_spares(platform, 1) == 1
    pool = await spare_pool(platform)
    assert (pool.ready, pool.total, pool.target) == (1, 1, 0)
    async with platform.db.engine.connect() as conn:
        spare_schema = (
            await conn.execute(
                text("select schema_name from platform.tenants where status = 'spare'")
            )
        ).scalar_one()
        # Migrations only: nothing seeded, no roles until a clinic claims it.
        assert (
            await conn.execute(text(f'select count(*) from "{spare_schema}".people'))
        ).scalar() == 0
        assert (
            await conn.execute(
                text(
                    "select count(*) from platform.roles r join platform.tenants t "
                    "on t.id = r.tenant_id where t.status = 'spare'"
                )
            )
        ).scalar() == 0

    claimed = await create_tenant(platform, unique_slug("claimed"), "Claimed", ["recall"])
    assert claimed.schema_name == spare_schema and claimed.status == "active"
    assert (await spare_pool(platform)).total == 0
    made = await create_tenant(platform, unique_slug("made"), "Made", ["recall"])
    assert made.schema_name != spare_schema

    expected = await picture(platform, made)
    got = await picture(platform, claimed)
    assert got == expected
    assert expected["roles"] and expected["people"]
    async with platform.db.engine.connect() as conn:
        assert (await find_tenant(conn, claimed.slug)).name == "Claimed"


async def test_concurrent_sign_ups_claim_different_spares(fresh_platform):
    platform = fresh_platform
    spares = {(await make_spare(platform)).schema_name for _ in range(3)}
    async with platform.db.engine.connect() as conn, conn.begin():
        # A sign-up in progress holds one spare; the others skip it instead of waiting.
        held = await claim_spare(platform, conn, unique_slug("held"), "Held")
        assert held is not None
        held_schema = held.tenant.schema_name
        first, second = await asyncio.wait_for(
            asyncio.gather(
                create_tenant(platform, unique_slug("one")),
                create_tenant(platform, unique_slug("two")),
            ),
            timeout=30,
        )
        assert {first.schema_name, second.schema_name} == spares - {held_schema}
        await conn.rollback()  # the held sign-up failed: its spare is back in the pool
    assert (await spare_pool(platform)).ready == 1
    third = await create_tenant(platform, unique_slug("three"))
    assert third.schema_name == held_schema
    fourth = await create_tenant(platform, unique_slug("four"))  # pool empty: made from nothing
    assert fourth.schema_name not in spares


async def test_spares_are_invisible_to_lookups_listings_hosts_and_drift(fresh_platform):
    platform = fresh_platform
    spare = await make_spare(platform)
    assert spare.slug.startswith("spare-")
    async with platform.db.engine.connect() as conn:
        assert spare.id not in {t.id for t in await all_tenants(conn, include_archived=True)}
        with pytest.raises(NotFound):
            await find_tenant(conn, spare.slug)
    assert await _lookup(platform, {"slug": spare.slug, "host": None, "tenant_id": None}) is None
    assert await _lookup(platform, {"slug": None, "host": None, "tenant_id": spare.id}) is None
    assert await find_drift(platform) == []

    async def work(op):
        raise AssertionError("a lifecycle operation ran on a spare")

    with pytest.raises(Conflict, match="is spare"):
        await run_locked(platform, spare.id, work)


async def test_a_spare_behind_the_code_is_not_claimed_until_the_fleet_upgrade(
    fresh_platform, tmp_path
):
    v1 = build_module(tmp_path / "v1", "sparemod", [REV1], auto_install=True)
    p1 = platform_with(fresh_platform, v1)
    try:
        spare = await make_spare(p1)
    finally:
        await p1.close()
    v2 = build_module(tmp_path / "v2", "sparemod", [REV1, REV2], auto_install=True, version="1.1.0")
    p2 = platform_with(fresh_platform, v2)
    try:
        assert (await spare_pool(p2)).ready == 0
        meanwhile = await create_tenant(p2, unique_slug("meanwhile"))
        assert meanwhile.schema_name != spare.schema_name
        assert list(await tenants_behind(p2)) == [spare.id]

        report = await upgrade_fleet(p2)
        assert report.failed == {} and report.upgraded == [spare.slug]
        assert (await spare_pool(p2)).ready == 1
        claimed = await create_tenant(p2, unique_slug("upgraded"))
        assert claimed.schema_name == spare.schema_name
        made = await create_tenant(p2, unique_slug("made"))
        got, expected = await picture(p2, claimed), await picture(p2, made)
        assert got == expected
    finally:
        await p2.close()


async def test_a_claimed_tenant_uninstalls_and_archives_like_any_other(fresh_platform):
    platform = fresh_platform
    await fill_spares(platform, 1)
    tenant = await create_tenant(platform, unique_slug("lifecycle"), modules=["recall"])
    executor = executor_of(platform)
    job = await submit(platform, "lifecycle.uninstall", tenant.id, {"module": "recall"})
    job = await executor.wait(platform, job.id)
    assert job.state == "succeeded", job.error
    async with platform.db.engine.connect() as conn:
        assert (await module_states(conn, tenant.id))["recall"]["state"] == "uninstalled"
    job = await submit(platform, "tenant.archive", tenant.id, {})
    job = await executor.wait(platform, job.id)
    assert job.state == "succeeded", job.error
    async with platform.db.engine.connect() as conn:
        assert not await schema_exists(conn, tenant.schema_name)
        assert (await all_tenants(conn, include_archived=True))[0].status == "archived"


async def test_the_claim_puts_the_transaction_in_the_tenant_schema(fresh_platform):
    platform = fresh_platform
    spare = await make_spare(platform)
    async with platform.db.engine.connect() as conn:
        async with conn.begin():
            claimed = await claim_spare(platform, conn, unique_slug("scoped"), "Scoped")
            assert claimed is not None and claimed.tenant.id == spare.id
            assert claimed.tenant.status == "active" and claimed.tenant.name == "Scoped"
            assert set(claimed.settings) == set(platform.registry.auto_install()) | set(
                platform.registry.closure(platform.registry.auto_install())
            )
            # What Operation.begin would have sent, sent with the claim instead.
            timeout = text("select setting from pg_settings where name = 'lock_timeout'")
            assert (await conn.execute(timeout)).scalar() == str(
                platform.settings.ddl_lock_timeout_ms
            )
            assert (
                await conn.execute(text("select current_setting('search_path')"))
            ).scalar() == spare.scope.search_path
            await conn.rollback()
        # Transaction-local: gone with the transaction, and the spare is back in the pool.
        async with conn.begin():
            assert (
                await conn.execute(text("select current_setting('search_path')"))
            ).scalar() == ""
    assert (await spare_pool(platform)).ready == 1


async def test_a_spare_whose_lifecycle_lock_is_held_is_left_alone(fresh_platform):
    platform = fresh_platform
    spare = await make_spare(platform)
    async with platform.db.engine.connect() as conn, conn.begin():
        await lock_tenant(conn, spare.id, 1.0)  # what a fleet upgrade of the spare holds
        made = await asyncio.wait_for(create_tenant(platform, unique_slug("busy")), timeout=30)
        assert made.schema_name != spare.schema_name
    assert (await spare_pool(platform)).ready == 1
    claimed = await create_tenant(platform, unique_slug("free"))
    assert claimed.schema_name == spare.schema_name


async def test_a_failed_claim_leaves_the_spare_in_the_pool(fresh_platform):
    platform = fresh_platform
    taken = await create_tenant(platform, unique_slug("taken"))  # no spare yet: from nothing
    spare = await make_spare(platform)
    with pytest.raises(Conflict, match="already exists"):
        await create_tenant(platform, taken.slug)
    assert (await spare_pool(platform)).ready == 1
    async with platform.db.engine.connect() as conn:
        row = (
            await conn.execute(
                text("select slug, status from platform.tenants where id = :id"),
                {"id": spare.id},
            )
        ).one()
        assert tuple(row) == (spare.slug, "spare")
    # The pool refills to its target after claims.
    assert (await create_tenant(platform, unique_slug("next"))).schema_name == spare.schema_name
    assert await fill_spares(platform, 2) == 2
    assert (await spare_pool(platform)).ready == 2


class GreetingSettings(BaseModel):
    greeting: str = "hola"


HOOK_CALLS = {
    "id": "h1",
    "upgrade": "op.create_table('hook_calls', sa.Column('id', sa.Integer, primary_key=True), "
    "sa.Column('hook', sa.Text), sa.Column('greeting', sa.Text), sa.Column('who', sa.Text))",
    "downgrade": "op.drop_table('hook_calls')",
}


async def test_a_claim_runs_every_hook_of_a_third_party_module(fresh_platform, tmp_path):
    hooked = build_module(
        tmp_path,
        "hooked",
        [HOOK_CALLS],
        hooks="""
        fail = False

        async def on_install(self, ctx):
            await self.record(ctx, "on_install")

        async def seed(self, ctx):
            if type(self).fail:
                raise RuntimeError("seed failed on purpose")
            await self.record(ctx, "seed")

        async def record(self, ctx, hook):
            from sqlalchemy import text
            await ctx.session.execute(
                text("insert into hook_calls (hook, greeting, who) values (:h, :g, current_user)"),
                {"h": hook, "g": ctx.settings["greeting"]},
            )
    """,
        auto_install=True,
        settings_model=GreetingSettings,
        permissions={"call.read": "Read hook calls"},
        role_grants={"dentist": ("call.read",)},
    )
    p = platform_with(fresh_platform, hooked)
    try:
        spare = await make_spare(p)
        hooked.fail = True
        with pytest.raises(RuntimeError, match="on purpose"):
            await create_tenant(p, unique_slug("failing"))
        assert (await spare_pool(p)).ready == 1  # rolled back: the spare is still a spare
        hooked.fail = False
        claimed = await create_tenant(p, unique_slug("hooked"))
        assert claimed.schema_name == spare.schema_name
        async with p.db.engine.connect() as conn:
            calls = (
                await conn.execute(
                    text(f'select hook, greeting, who from "{claimed.schema_name}".hook_calls')
                )
            ).all()
        # In order, with the module's settings, each under the tenant's role.
        assert [tuple(c) for c in calls] == [
            ("on_install", "hola", claimed.db_role),
            ("seed", "hola", claimed.db_role),
        ]
        made = await create_tenant(p, unique_slug("made"))
        got, expected = await picture(p, claimed), await picture(p, made)
        # The failed claim's seeds used sequence values (sequences are not transactional).
        for found in (got, expected):
            found["people"] = [(name, kind) for _id, name, kind in found["people"]]
        assert got == expected
        assert any(
            r.name == "dentist" and "hooked.call.read" in r.permissions for r in got["roles"]
        )
    finally:
        await p.close()
