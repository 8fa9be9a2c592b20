"""Drift check: does `platform.tenant_modules` still say what each tenant's schema holds?

The fleet upgrade trusts the cached revisions in `platform.tenant_modules` (one
query instead of one per tenant). This check reads every tenant's own version
tables and reports, and with `fix` reconciles, any difference: a schema dropped
behind the platform's back, a version table edited by hand, a module's tables gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import tenant_modules

from ._catalogue import TenantRecord, all_tenants, module_states
from ._introspect import schema_exists


@dataclass(frozen=True)
class Drift:
    tenant: str
    module: str | None
    recorded: str | None
    actual: str | None
    problem: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


async def find_drift(platform: Platform, *, fix: bool = False) -> list[Drift]:
    found: list[Drift] = []
    async with platform.db.engine.connect() as conn:
        tenants = await all_tenants(conn)
    for tenant in tenants:
        async with platform.db.engine.connect() as conn, conn.begin():
            drifts = await _tenant_drift(conn, tenant)
            if fix:
                await _reconcile(conn, tenant, drifts)
        found.extend(drifts)
    return found


async def _tenant_drift(conn: AsyncConnection, tenant: TenantRecord) -> list[Drift]:
    if not await schema_exists(conn, tenant.schema_name):
        return [Drift(tenant.slug, None, None, None, f"schema {tenant.schema_name} does not exist")]
    tables = set(
        (
            await conn.execute(
                text(
                    "select relname from pg_class where relnamespace = cast(:s as regnamespace) "
                    "and relname like 'alembic\\_version\\_%'"
                ),
                {"s": tenant.schema_name},
            )
        ).scalars()
    )
    drifts = []
    for name, state in (await module_states(conn, tenant.id)).items():
        table = f"alembic_version_{name}"
        actual = None
        if table in tables:
            actual = (
                await conn.execute(
                    text(f'select version_num from "{tenant.schema_name}"."{table}"')
                )
            ).scalar()
        recorded = state["revision"] if state["state"] == "installed" else None
        if state["state"] == "installed" and state["revision"] is not None and actual is None:
            drifts.append(
                Drift(
                    tenant.slug,
                    name,
                    recorded,
                    None,
                    "recorded as installed but its version table is missing",
                )
            )
        elif actual != recorded:
            drifts.append(
                Drift(
                    tenant.slug,
                    name,
                    recorded,
                    actual,
                    "recorded revision differs from the schema's version table",
                )
            )
    return drifts


async def _reconcile(conn: AsyncConnection, tenant: TenantRecord, drifts: list[Drift]) -> None:
    for drift in drifts:
        if drift.module is None or drift.actual is None:
            continue  # a missing schema or table needs a human: restore, or archive the tenant
        await conn.execute(
            update(tenant_modules)
            .where(tenant_modules.c.tenant_id == tenant.id, tenant_modules.c.module == drift.module)
            .values(
                revision=drift.actual,
                state="installed",
                updated_at=datetime.now(UTC),
                error=f"reconciled from {drift.recorded} by the drift check",
            )
        )
