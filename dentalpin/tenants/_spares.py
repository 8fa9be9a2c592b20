"""Spare schemas (DESIGN §4, provisioning path b).

A spare is a `platform.tenants` row with status `spare`: its schema and role exist under
their final `t_<id>` names (never renamed) and the auto-install modules are migrated in
it, but nothing is seeded, no hook has run and no listener has been told (seeding belongs
to the clinic). `create_tenant` claims one with `FOR UPDATE SKIP LOCKED` when its modules
are exactly the auto-install set at the code's head, then seeds it; the fleet upgrade
upgrades spares (migrations only) so they stay claimable. No lookup, listing, host
resolution or drift check sees a spare. The pool is topped up explicitly
(`dentalpin tenants spares --fill N`), never in the background.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform import Conflict
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import tenants

from ._catalogue import (
    SPARE,
    TenantRecord,
    create_schema_and_role,
    new_schema_name,
    tenant_record,
)
from ._lifecycle import Log, Operation, _quiet, install
from ._lineage import lineages

# Which spares are claimable: their installed modules, as {module: [revision, version]},
# equal what a fresh install would record for the auto-install modules at the code's head.
_MODULES_OF_SPARE = """
(select coalesce(jsonb_object_agg(tm.module, jsonb_build_array(tm.revision, tm.version)),
                 '{}'::jsonb)
   from platform.tenant_modules tm
  where tm.tenant_id = t.id and tm.state = 'installed')
"""
_CLAIM = text(
    f"""
    select t.id from platform.tenants t
     where t.status = 'spare' and {_MODULES_OF_SPARE} = cast(:expected as jsonb)
     order by t.created_at, t.id
     for update of t skip locked
     limit 1
    """
)
_COUNT = text(
    f"""
    select count(*) filter (where {_MODULES_OF_SPARE} = cast(:expected as jsonb)) as ready,
           count(*) as total
      from platform.tenants t
     where t.status = 'spare'
    """
)


def expected_modules(platform: Platform) -> dict[str, list[str | None]]:
    """{module: [head revision, version]} of the auto-install modules and their dependencies."""
    every = lineages(platform.registry, platform.state)
    registry = platform.registry
    return {
        name: [every[name].head, registry.get(name).manifest.version]
        for name in registry.closure(registry.auto_install())
    }


async def claim_spare(
    platform: Platform, conn: AsyncConnection, slug: str, name: str
) -> TenantRecord | None:
    """Make a claimable spare this tenant (in the caller's transaction), or None if there is
    none free. Concurrent claims take different spares (SKIP LOCKED)."""
    spare_id = (
        await conn.execute(_CLAIM, {"expected": json.dumps(expected_modules(platform))})
    ).scalar()
    if spare_id is None:
        return None
    # A fleet upgrade of this spare holds the tenant's lifecycle lock: leave the spare to it.
    locked = (
        await conn.execute(
            text("select pg_try_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"tenant:{spare_id}"},
        )
    ).scalar()
    if not locked:
        return None
    try:
        row = (
            await conn.execute(
                update(tenants)
                .where(tenants.c.id == spare_id)
                .values(
                    slug=slug,
                    name=name,
                    status="active",
                    created_at=func.now(),
                    updated_at=func.now(),
                )
                .returning(*tenants.c)
            )
        ).one()
    except IntegrityError:
        raise Conflict(f"a tenant with slug '{slug}' already exists") from None
    return tenant_record(row)


async def make_spare(platform: Platform, log: Log = _quiet) -> TenantRecord:
    """One spare: row, schema, role and the auto-install modules' migrations, in one transaction."""
    schema = new_schema_name()
    async with platform.db.engine.connect() as conn, conn.begin():
        row = (
            await conn.execute(
                insert(tenants)
                .values(
                    id=uuid.uuid4(),
                    # Never a user's slug: validate_slug refuses '_', and schema names have one.
                    slug=f"spare-{schema}",
                    name="spare",
                    schema_name=schema,
                    db_role=f"{platform.settings.role_prefix}{schema}",
                    status=SPARE,
                )
                .returning(*tenants.c)
            )
        ).one()
        spare = tenant_record(row)
        await create_schema_and_role(conn, spare, platform.settings)
        op = Operation(platform, conn, spare, log)
        await op.begin()
        modules = platform.registry.auto_install()
        if modules:
            await install(op, modules)
    await log(f"created spare schema {schema}")
    return spare


@dataclass
class SparePool:
    ready: int
    """Claimable: their modules are the auto-install set at the code's head."""
    total: int
    """Every spare, also those behind (the fleet upgrade brings them to head) or with
    another module set (auto-install changed: never claimed)."""
    target: int

    def as_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "total": self.total, "target": self.target}


async def spare_pool(platform: Platform) -> SparePool:
    async with platform.db.engine.connect() as conn:
        row = (
            await conn.execute(_COUNT, {"expected": json.dumps(expected_modules(platform))})
        ).one()
    return SparePool(row.ready, row.total, platform.settings.spare_schemas)


async def fill_spares(platform: Platform, target: int | None = None, log: Log = _quiet) -> int:
    """Create spares until `target` (default: the `spare_schemas` setting) are claimable;
    return how many were created."""
    wanted = platform.settings.spare_schemas if target is None else target
    missing = max(0, wanted - (await spare_pool(platform)).ready)
    for _ in range(missing):
        await make_spare(platform, log)
    return missing
