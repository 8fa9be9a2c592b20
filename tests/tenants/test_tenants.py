"""The tenant catalogue: creation with hostile input, archive and restore."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from dentalpin.platform import Conflict, InvalidInput
from dentalpin.platform._jobs import executor_of, submit
from dentalpin.platform._tables import tenants
from dentalpin.tenants import all_tenants, create_tenant, find_tenant, restore_tenant
from dentalpin.tenants._introspect import describe_schema, schema_exists
from tests.conftest import unique_slug


async def counts(platform):
    async with platform.db.engine.connect() as conn:
        n_tenants = (await conn.execute(select(func.count()).select_from(tenants))).scalar()
        n_schemas = (
            await conn.execute(text("select count(*) from pg_namespace where nspname like 't\\_%'"))
        ).scalar()
    return n_tenants, n_schemas


@pytest.mark.parametrize(
    "slug",
    [
        "x'; drop table platform.tenants; --",
        "../../etc/passwd",
        "Acme",
        "a",
        "-acme",
        "acme-",
        "ac--me",
        "xn--acme",
        "admin",
        "www",
        "a" * 41,
        "acme dental",
        "acmé",
        "acme\x00",
        "",
    ],
)
async def test_hostile_or_reserved_slugs_are_refused_and_nothing_is_created(platform, slug):
    before = await counts(platform)
    with pytest.raises(InvalidInput):
        await create_tenant(platform, slug)
    assert await counts(platform) == before


async def test_names_are_data_and_schema_names_are_generated(platform):
    slug = unique_slug()
    tenant = await create_tenant(platform, slug, name="Clínica O'Brien; drop table x")
    assert tenant.name == "Clínica O'Brien; drop table x"
    assert tenant.schema_name.startswith("t_") and slug not in tenant.schema_name
    assert tenant.db_role == platform.settings.role_prefix + tenant.schema_name
    with pytest.raises(Conflict, match="already exists"):
        await create_tenant(platform, slug)
    with pytest.raises(InvalidInput):
        await create_tenant(platform, unique_slug(), name="\x07bell")


async def test_archive_drops_the_schema_and_restore_brings_the_clinic_back(platform):
    slug = unique_slug("archive")
    tenant = await create_tenant(platform, slug, modules=["recall"])
    async with platform.db.tenant(tenant.scope) as s:
        await s.execute(text("insert into people (name, kind) values ('Ana', 'patient')"))
        await s.execute(
            text(
                "insert into patients_patients (given_name, family_name) "
                "values ('Ana', 'Gil'), ('Luis', 'Mora')"
            )
        )
        await s.execute(
            text(
                "insert into recall_reminders (patient_id, due_on) "
                "select id, date '2027-03-01' from patients_patients order by number"
            )
        )
    async with platform.db.engine.connect() as conn:
        picture = await describe_schema(conn, tenant.schema_name)
    job = await submit(platform, "tenant.archive", tenant.id, {})
    job = await executor_of(platform).wait(platform, job.id)
    assert job.state == "succeeded", job.error
    archive_id = job.result["archive_id"]
    # Every table goes, the platform's event kernel (outbox, deliveries, inbox) included.
    tables = job.result["tables"]
    assert {t: tables[t] for t in ("people", "patients_patients", "recall_reminders")} == {
        "people": 2,
        "patients_patients": 2,
        "recall_reminders": 2,
    }
    assert {t: tables[t] for t in ("_outbox", "_deliveries", "_inbox")} == dict.fromkeys(
        ("_outbox", "_deliveries", "_inbox"), 0
    )

    async with platform.db.engine.connect() as conn:
        assert not await schema_exists(conn, tenant.schema_name)
        roles = (
            await conn.execute(
                text("select count(*) from pg_roles where rolname = :r"), {"r": tenant.db_role}
            )
        ).scalar()
        assert roles == 0
        assert slug not in [t.slug for t in await all_tenants(conn)]
        archived = [t for t in await all_tenants(conn, include_archived=True) if t.slug == slug]
        assert archived[0].status == "archived"

    # The slug is free again; restoring under it is refused while it is taken.
    squatter = await create_tenant(platform, slug)
    with pytest.raises(Conflict, match="taken"):
        await restore_tenant(platform, archive_id)
    restored = await restore_tenant(platform, archive_id, slug=unique_slug("back"))
    assert restored.id == tenant.id and restored.schema_name != tenant.schema_name
    async with platform.db.tenant(restored.scope) as s:
        rows = (
            await s.execute(
                text(
                    "select p.given_name, r.due_on from recall_reminders r "
                    "join patients_patients p on p.id = r.patient_id order by r.id"
                )
            )
        ).all()
    assert [r.given_name for r in rows] == ["Ana", "Luis"]
    async with platform.db.engine.connect() as conn:
        assert await describe_schema(conn, restored.schema_name) == picture
        assert (await find_tenant(conn, squatter.slug)).id == squatter.id


async def test_a_tenant_whose_schema_vanished_can_still_be_archived(platform):
    tenant = await create_tenant(platform, unique_slug("vanished"))
    async with platform.db.engine.begin() as conn:
        await conn.execute(text(f'drop schema "{tenant.schema_name}" cascade'))
    job = await submit(platform, "tenant.archive", tenant.id, {})
    job = await executor_of(platform).wait(platform, job.id)
    assert job.state == "succeeded", job.error
    assert job.result["archive_id"] is None
    assert "nothing to archive" in job.result["note"]
    async with platform.db.engine.connect() as conn:
        assert tenant.slug not in [t.slug for t in await all_tenants(conn)]
        roles = (
            await conn.execute(
                text("select count(*) from pg_roles where rolname = :r"), {"r": tenant.db_role}
            )
        ).scalar()
    assert roles == 0
