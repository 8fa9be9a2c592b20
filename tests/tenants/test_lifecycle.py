"""Per-tenant module lifecycle: install, uninstall, restore, upgrade, and what goes wrong."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from dentalpin.platform import Conflict, UnknownModule
from dentalpin.platform._jobs import executor_of, get_job, job_log_lines, submit
from dentalpin.platform._tables import archives, tenant_modules
from dentalpin.tenants import create_tenant, module_states, run_locked
from dentalpin.tenants._archive import archive_key, read_archive
from dentalpin.tenants._introspect import describe_schema
from tests.conftest import unique_slug
from tests.tenants.factory import build_module, platform_with


async def run_job(platform, kind, tenant, **params):
    job = await submit(platform, kind, tenant.id, params)
    return await executor_of(platform).wait(platform, job.id)


async def states(platform, tenant):
    async with platform.db.engine.connect() as conn:
        return await module_states(conn, tenant.id)


KERNEL_MARKS = ("_outbox", "_deliveries", "_inbox", "_mark_events_pending", "outbox_marks")


async def schema_picture(platform, tenant):
    """The modules' part of the tenant schema (the platform's event kernel left out)."""
    async with platform.db.engine.connect() as conn:
        picture = await describe_schema(conn, tenant.schema_name)
    return {
        kind: [row for row in rows if not any(mark in row for mark in KERNEL_MARKS)]
        for kind, rows in picture.items()
    }


async def scalar(platform, tenant, sql):
    async with platform.db.tenant(tenant.scope) as s:
        return (await s.execute(text(sql))).scalar()


async def test_install_pulls_in_the_missing_dependency_closure(platform, slug):
    tenant = await create_tenant(platform, slug)
    assert (await states(platform, tenant))["fx_people"]["state"] == "installed"
    job = await run_job(platform, "lifecycle.uninstall", tenant, module="fx_people", cascade=False)
    assert job.state == "succeeded", job.error
    job = await run_job(platform, "lifecycle.install", tenant, modules=["fx_visits"])
    assert job.state == "succeeded", job.error
    assert job.result == {"installed": ["fx_people", "fx_visits"]}
    current = await states(platform, tenant)
    assert current["fx_people"]["state"] == current["fx_visits"]["state"] == "installed"
    assert current["fx_visits"]["revision"] == "fxv_0001"

    # The third-party recall module pulls in the patients module it depends on.
    if current.get("patients", {}).get("state") == "installed":  # an auto-install needs it
        job = await run_job(
            platform, "lifecycle.uninstall", tenant, module="patients", cascade=True
        )
        assert job.state == "succeeded", job.error
    job = await run_job(platform, "lifecycle.install", tenant, modules=["recall"])
    assert job.state == "succeeded", job.error
    assert job.result == {"installed": ["patients", "recall"]}
    assert (await states(platform, tenant))["recall"]["revision"] == "rc_0001"


async def test_install_refuses_what_it_cannot_do(platform, slug):
    tenant = await create_tenant(platform, slug)
    with pytest.raises(UnknownModule, match="Did you mean 'recall'"):
        await create_tenant(platform, unique_slug(), modules=["recal"])
    job = await run_job(platform, "lifecycle.install", tenant, modules=["fx_people"])
    assert job.state == "failed" and "already installed" in job.error


async def test_a_migration_failing_halfway_leaves_the_tenant_exactly_as_before(
    platform, slug, tmp_path
):
    broken = build_module(
        tmp_path,
        "halfway",
        [
            {
                "id": "h1",
                "upgrade": "op.create_table('half_one', sa.Column('id', sa.Integer, "
                "primary_key=True))",
                "downgrade": "op.drop_table('half_one')",
            },
            {
                "id": "h2",
                "upgrade": "op.create_table('half_two', sa.Column('id', sa.Integer, "
                "primary_key=True))\nop.execute('select 1/0')",
            },
        ],
        depends={"fx_people": ">=1"},
    )
    p = platform_with(platform, broken)
    try:
        tenant = await create_tenant(p, slug)
        async with p.db.tenant(tenant.scope) as s:
            await s.execute(text("insert into people (name, kind) values ('Keep', 'staff')"))
        before_schema, before_states = await schema_picture(p, tenant), await states(p, tenant)
        job = await run_job(p, "lifecycle.install", tenant, modules=["halfway"])
        assert job.state == "failed"
        assert "halfway" in job.error and "division by zero" in job.error
        assert await schema_picture(p, tenant) == before_schema
        assert await states(p, tenant) == before_states
        assert await scalar(p, tenant, "select count(*) from people where name = 'Keep'") == 1
        log = await job_log_lines(p, job.id)
        assert log[-1]["level"] == "error"
    finally:
        await p.close()


async def test_uninstall_rules_dry_run_veto_and_cascade(platform, slug):
    tenant = await create_tenant(platform, slug, modules=["recall", "fx_visits"])
    async with platform.db.tenant(tenant.scope) as s:
        await s.execute(text("insert into people (name, kind) values ('Ana', 'patient')"))
        await s.execute(text("insert into visits (person_id) select id from people"))
        await s.execute(
            text("insert into patients_patients (given_name, family_name) values ('Eva', 'Gil')")
        )
        await s.execute(
            text(
                "insert into recall_reminders (patient_id, due_on, legal_hold) select id, "
                "date '2027-01-10', true from patients_patients where given_name = 'Eva'"
            )
        )
    job = await run_job(platform, "lifecycle.uninstall", tenant, module="fx_people")
    assert job.state == "failed" and "depend on 'fx_people': fx_visits" in job.error

    from dentalpin.tenants import dry_run_uninstall

    plan = await dry_run_uninstall(platform, tenant.slug, "fx_people", cascade=True)
    assert plan.modules == ["fx_visits", "fx_people"]
    assert plan.tables == {"fx_visits": {"visits": 2}, "fx_people": {"people": 2}}
    assert plan.vetoes == {}
    plan = await dry_run_uninstall(platform, tenant.slug, "recall", cascade=False)
    assert plan.vetoes == {"recall": "1 reminder(s) are on legal hold"}

    before = await schema_picture(platform, tenant)
    job = await run_job(platform, "lifecycle.uninstall", tenant, module="recall")
    assert job.state == "failed" and "legal hold" in job.error
    assert await schema_picture(platform, tenant) == before
    assert {s["state"] for s in (await states(platform, tenant)).values()} == {"installed"}

    async with platform.db.tenant(tenant.scope) as s:
        await s.execute(text("update recall_reminders set legal_hold = false"))
    job = await run_job(platform, "lifecycle.uninstall", tenant, module="recall")
    assert job.state == "succeeded", job.error
    job = await run_job(platform, "lifecycle.uninstall", tenant, module="fx_people", cascade=True)
    assert job.state == "succeeded", job.error
    assert job.result["modules"] == ["fx_visits", "fx_people"]
    after = await states(platform, tenant)
    assert {n: after[n]["state"] for n in ("fx_people", "fx_visits", "recall")} == {
        "fx_people": "uninstalled",
        "fx_visits": "uninstalled",
        "recall": "uninstalled",
    }
    picture = await schema_picture(platform, tenant)
    assert not any(
        "people" in row or "visits" in row or "recall" in row
        for rows in picture.values()
        for row in rows
    ), picture


async def test_the_archive_holds_exactly_what_was_dropped_and_restore_brings_it_back(
    platform, slug
):
    tenant = await create_tenant(platform, slug)
    async with platform.db.tenant(tenant.scope) as s:
        for name in ("Ana", "Luis", "Marta"):
            await s.execute(
                text(
                    f"insert into people (name, kind, email) values "
                    f"('{name}', 'patient', '{name.lower()}@example.es')"
                )
            )
        await s.execute(text("delete from people where name = 'Marta'"))
        await s.execute(text("select nextval('fx_people_badge_seq')"))
        rows_before = (await s.execute(text("select * from people order by id"))).all()
        badge_next = (await s.execute(text("select last_value from fx_people_badge_seq"))).scalar()
    job = await run_job(platform, "lifecycle.uninstall", tenant, module="fx_people")
    assert job.state == "succeeded", job.error
    archive_id = job.result["archives"]["fx_people"]

    async with platform.db.engine.connect() as conn:
        row = (await conn.execute(select(archives).where(archives.c.id == archive_id))).one()
    assert row.tenant_id == tenant.id and row.module == "fx_people"
    contents, tables, sequences = read_archive(
        Path(row.path), row.sha256, archive_key(platform.settings)
    )
    assert contents["revision"] == "fxp_0002"
    assert [t.name for t in tables] == ["people"] and tables[0].rows == len(rows_before)
    assert b"luis@example.es" in tables[0].data and b"marta" not in tables[0].data
    assert {s.name for s in sequences} == {"people_id_seq", "fx_people_badge_seq"}

    job = await run_job(platform, "lifecycle.restore", tenant, module="fx_people")
    assert job.state == "succeeded", job.error
    async with platform.db.tenant(tenant.scope) as s:
        assert (await s.execute(text("select * from people order by id"))).all() == rows_before
        new_id = (
            await s.execute(
                text("insert into people (name, kind) values ('Nuevo', 'patient') returning id")
            )
        ).scalar()
        new_badge = (
            await s.execute(text("select badge from people where id = :i"), {"i": new_id})
        ).scalar()
    assert (
        new_id == max(r.id for r in rows_before) + 1 + 1
    )  # Marta's id stays consumed: the sequence came back
    assert new_badge == badge_next + 1
    assert (await states(platform, tenant))["fx_people"]["state"] == "installed"


async def test_restore_refuses_a_tampered_archive_or_another_tenants_archive(platform):
    a = await create_tenant(platform, unique_slug("arch-a"))
    b = await create_tenant(platform, unique_slug("arch-b"))
    ids = {}
    for tenant in (a, b):
        job = await run_job(platform, "lifecycle.uninstall", tenant, module="fx_people")
        assert job.state == "succeeded", job.error
        ids[tenant.slug] = job.result["archives"]["fx_people"]

    without = await schema_picture(platform, a)
    job = await run_job(
        platform, "lifecycle.restore", a, module="fx_people", archive_id=ids[b.slug]
    )
    assert job.state == "failed" and "no archive" in job.error

    async with platform.db.engine.connect() as conn:
        path = Path(
            (
                await conn.execute(select(archives.c.path).where(archives.c.id == ids[a.slug]))
            ).scalar_one()
        )
    original = path.read_bytes()
    path.write_bytes(original[:-10] + b"0123456789")
    job = await run_job(platform, "lifecycle.restore", a, module="fx_people")
    assert job.state == "failed" and "checksum" in job.error
    assert (await states(platform, a))["fx_people"]["state"] == "uninstalled"
    assert await schema_picture(platform, a) == without  # nothing half-restored

    path.write_bytes(original)
    job = await run_job(platform, "lifecycle.restore", a, module="fx_people")
    assert job.state == "succeeded", job.error


async def test_one_lifecycle_operation_at_a_time_per_tenant(platform, slug, tmp_path):
    slow = build_module(
        tmp_path,
        "slowpoke",
        [],
        hooks="""
        async def on_install(self, ctx):
            await ctx.log("waiting for the gate")
            await type(self).gate.wait()
    """,
    )
    p = platform_with(platform, slow)
    slow.gate = asyncio.Event()
    try:
        tenant = await create_tenant(p, slug)
        first = await submit(p, "lifecycle.install", tenant.id, {"modules": ["slowpoke"]})
        for _ in range(100):
            running = await get_job(p, first.id)
            log = await job_log_lines(p, first.id)
            if running.state == "running" and any("gate" in line["message"] for line in log):
                break
            await asyncio.sleep(0.05)
        # Progress and log are visible while the job's own transaction is still open.
        assert running.state == "running"
        with pytest.raises(Conflict, match=str(first.id)):
            await submit(p, "lifecycle.install", tenant.id, {"modules": ["fx_visits"]})

        async def other_work(op):
            return "ran after the first released the tenant"

        waiting = asyncio.ensure_future(run_locked(p, tenant.id, other_work))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # blocked on the tenant's lock, not failed
        slow.gate.set()
        done = await executor_of(p).wait(p, first.id)
        assert done.state == "succeeded", done.error
        assert await waiting == "ran after the first released the tenant"
    finally:
        await p.close()


async def test_uninstalling_state_is_visible_during_the_job_and_reverted_on_failure(
    platform, slug, tmp_path
):
    mod = build_module(
        tmp_path,
        "gated",
        [
            {
                "id": "g1",
                "upgrade": "op.create_table('gated_items', sa.Column('id', sa.Integer, "
                "primary_key=True))",
                "downgrade": "op.drop_table('gated_items')",
            },
        ],
        hooks="""
        async def on_uninstall(self, ctx):
            await type(self).gate.wait()
            if type(self).fail:
                raise RuntimeError("hook failed on purpose")
    """,
    )
    p = platform_with(platform, mod)
    try:
        tenant = await create_tenant(p, slug, modules=["gated"])
        for fail, final in ((True, "installed"), (False, "uninstalled")):
            mod.gate, mod.fail = asyncio.Event(), fail
            job = await submit(p, "lifecycle.uninstall", tenant.id, {"module": "gated"})
            for _ in range(100):
                if (await states(p, tenant))["gated"]["state"] == "uninstalling":
                    break
                await asyncio.sleep(0.05)
            assert (await states(p, tenant))["gated"]["state"] == "uninstalling"
            mod.gate.set()
            await executor_of(p).wait(p, job.id)
            assert (await states(p, tenant))["gated"]["state"] == final
    finally:
        await p.close()


async def test_schema_dropped_behind_the_platforms_back_is_reported(platform, slug):
    tenant = await create_tenant(platform, slug)
    async with platform.db.engine.begin() as conn:
        await conn.execute(text(f'drop schema "{tenant.schema_name}" cascade'))
    job = await run_job(platform, "lifecycle.install", tenant, modules=["fx_visits"])
    assert job.state == "failed"
    assert "does not exist" in job.error and tenant.schema_name in job.error


async def test_stuck_uninstalling_state_from_a_dead_process_heals(platform, slug):
    tenant = await create_tenant(platform, slug)
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            update(tenant_modules)
            .where(tenant_modules.c.tenant_id == tenant.id)
            .values(state="uninstalling")
        )
    job = await run_job(platform, "lifecycle.install", tenant, modules=["fx_visits"])
    assert job.state == "succeeded", job.error
    assert (await states(platform, tenant))["fx_people"]["state"] == "installed"


def test_factory_modules_are_importable():
    assert "tests.tenants.factory" in sys.modules


async def test_restoring_a_dependent_brings_back_its_cascaded_dependencies_too(platform, slug):
    tenant = await create_tenant(platform, slug, modules=["fx_visits"])
    async with platform.db.tenant(tenant.scope) as s:
        await s.execute(text("insert into people (name, kind) values ('Eva', 'patient')"))
        await s.execute(
            text(
                "insert into visits (person_id, note) select id, 'revisión' from people "
                "where name = 'Eva'"
            )
        )
    job = await run_job(platform, "lifecycle.uninstall", tenant, module="fx_people", cascade=True)
    assert job.state == "succeeded", job.error
    job = await run_job(platform, "lifecycle.restore", tenant, module="fx_visits")
    assert job.state == "succeeded", job.error
    async with platform.db.tenant(tenant.scope) as s:
        rows = (
            await s.execute(text("select p.name from visits v join people p on p.id = v.person_id"))
        ).all()
    assert [r.name for r in rows] == ["Eva"]
    assert {s["state"] for s in (await states(platform, tenant)).values()} == {"installed"}
