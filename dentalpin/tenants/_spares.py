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

from sqlalchemy import Text, insert, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform import Conflict
from dentalpin.platform._db import search_path_sql
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
# The whole claim in one round trip. `spare` takes the oldest claimable spare no other
# sign-up holds (SKIP LOCKED: concurrent claims take different spares) and, as the lock
# the fleet upgrade of that spare would hold, the tenant's lifecycle key: if it is taken
# (an upgrade is running) nothing is claimed. `claimed` makes it the clinic's; `modules`
# stamps the spare's modules installed for the clinic now and hands their settings to the
# hooks; the select puts the transaction where `Operation.begin` would (lock timeout, the
# tenant's search path). Nothing is returned, and nothing set, when no spare was claimed.
_CLAIM = text(
    f"""
    with spare as materialized (
        select t.id from platform.tenants t
         where t.status = 'spare' and {_MODULES_OF_SPARE} = cast(:expected as jsonb)
         order by t.created_at, t.id
         for update of t skip locked
         limit 1
    ), claimed as (
        update platform.tenants t
           set slug = :slug, name = :name, status = 'active',
               created_at = now(), updated_at = now()
          from spare
         where t.id = spare.id
           and pg_try_advisory_xact_lock(hashtextextended(concat('tenant:', spare.id), 0))
        returning t.*
    ), modules as (
        update platform.tenant_modules tm
           set installed_at = now(), updated_at = now()
          from claimed
         where tm.tenant_id = claimed.id and tm.state = 'installed'
        returning tm.module, tm.settings
    )
    select claimed.*,
           (select jsonb_object_agg(m.module, m.settings) from modules m) as module_settings,
           set_config('lock_timeout', cast(:lock_timeout as text), true) as lock_timeout,
           set_config('search_path', {search_path_sql("claimed.schema_name")}, true)
             as search_path
      from claimed
    """
).columns(*tenants.c, module_settings=JSONB, lock_timeout=Text, search_path=Text)
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


@dataclass(frozen=True)
class ClaimedSpare:
    """A spare made this tenant, inside the caller's transaction, which the claim has already
    put in the tenant's schema with the DDL lock timeout (what `Operation.begin` does)."""

    tenant: TenantRecord
    settings: dict[str, dict[str, Any]]
    """{module: settings} of the spare's installed modules: the auto-install closure."""


async def claim_spare(
    platform: Platform, conn: AsyncConnection, slug: str, name: str
) -> ClaimedSpare | None:
    """Make a claimable spare this tenant (in the caller's transaction), or None if there is
    none free. Concurrent claims take different spares (SKIP LOCKED)."""
    expected = expected_modules(platform)
    try:
        row = (
            await conn.execute(
                _CLAIM,
                {
                    "expected": json.dumps(expected),
                    "slug": slug,
                    "name": name,
                    "lock_timeout": f"{int(platform.settings.ddl_lock_timeout_ms)}ms",
                },
            )
        ).first()
    except IntegrityError:
        raise Conflict(f"a tenant with slug '{slug}' already exists") from None
    if row is None:
        return None
    tenant = tenant_record(row)
    settings: dict[str, dict[str, Any]] = dict(row.module_settings or {})
    # Both were set in SQL from the row; the scope's own rules (validated names, the one
    # search-path format) must agree, else the transaction is abandoned here.
    if row.search_path != tenant.scope.search_path or set(settings) != set(expected):
        raise RuntimeError(f"claiming spare {tenant.schema_name} set an unexpected scope")
    return ClaimedSpare(tenant, settings)


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
