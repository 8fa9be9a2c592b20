"""Fleet migrations: the platform schema, the module catalogue, then every tenant that is behind.

Which tenants are behind is one query on `platform.tenant_modules` against the
code's heads; each is upgraded in its own transaction with bounded concurrency,
and a failing tenant is recorded and isolated while the others proceed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, bindparam, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import modules as catalogue
from dentalpin.platform._tables import tenant_modules, tenants

from ._lifecycle import upgrade
from ._lineage import lineages
from ._operations import run_locked

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "platform" / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


async def migrate_platform(platform: Platform) -> str | None:
    """Bring the shared `platform` schema to head; return the revision it is at."""

    def run(conn: Connection) -> str | None:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        return conn.execute(text("select version_num from platform.alembic_version")).scalar()

    async with platform.db.engine.connect() as conn:
        revision = await conn.run_sync(run)
        await conn.commit()
    return revision


async def sync_catalogue(platform: Platform) -> None:
    """Record every discovered module (and every quarantined one, with its reason)."""
    heads = module_heads(platform)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "name": s.name,
            "version": s.manifest.version,
            "summary": s.manifest.summary,
            "category": s.manifest.category.value,
            "distribution": s.distribution,
            "state": "available",
            "reason": None,
            "head_revision": heads[s.name],
            "updated_at": now,
        }
        for s in platform.registry
    ] + [
        {
            "name": q.name,
            "version": None,
            "summary": None,
            "category": None,
            "distribution": q.distribution,
            "state": "quarantined",
            "reason": q.reason,
            "head_revision": None,
            "updated_at": now,
        }
        for q in platform.registry.quarantined.values()
    ]
    async with platform.db.engine.begin() as conn:
        if rows:
            stmt = pg_insert(catalogue).values(rows)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["name"],
                    set_={c: stmt.excluded[c] for c in rows[0] if c != "name"},
                )
            )
        known = [r["name"] for r in rows]
        await conn.execute(
            update(catalogue)
            .where(catalogue.c.name.not_in(known))
            .values(state="missing", reason="no installed distribution provides it", updated_at=now)
        )


def module_heads(platform: Platform) -> dict[str, str | None]:
    return {name: lin.head for name, lin in lineages(platform.registry, platform.state).items()}


async def tenants_behind(platform: Platform) -> dict[uuid.UUID, list[str]]:
    """Tenants whose recorded module revision or version differs from the code (one query)."""
    heads = module_heads(platform)
    if not heads:
        return {}
    versions = {s.name: s.manifest.version for s in platform.registry}
    values = ", ".join(f"(:m{i}, :h{i}, :v{i})" for i in range(len(heads)))
    params: dict[str, Any] = {}
    for i, (name, head) in enumerate(heads.items()):
        params |= {f"m{i}": name, f"h{i}": head, f"v{i}": versions[name]}
    query = text(
        f"""
        select tm.tenant_id, array_agg(tm.module order by tm.module) as modules
          from platform.tenant_modules tm
          join platform.tenants t on t.id = tm.tenant_id and t.status = 'active'
          join (values {values}) as code(module, head, version) on code.module = tm.module
         where tm.state = 'installed'
           and (tm.revision is distinct from code.head or tm.version is distinct from code.version)
         group by tm.tenant_id
        """
    ).bindparams(*(bindparam(k) for k in params))
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(query, params)
        return {row.tenant_id: list(row.modules) for row in rows}


@dataclass
class FleetReport:
    behind: int = 0
    upgraded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "behind": self.behind,
            "upgraded": len(self.upgraded),
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }


async def upgrade_fleet(
    platform: Platform,
    concurrency: int = 4,
    on_tenant: Callable[[str, str | None], None] | None = None,
) -> FleetReport:
    """Upgrade every tenant that is behind, `concurrency` at a time, isolating failures."""
    started = time.perf_counter()
    behind = await tenants_behind(platform)
    slugs = await _slugs(platform, list(behind))
    report = FleetReport(behind=len(behind))
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(tenant_id: uuid.UUID, modules: list[str]) -> None:
        async with gate:
            slug = slugs.get(tenant_id, str(tenant_id))
            try:

                async def work(op: Any) -> None:
                    await upgrade(op, modules)

                await run_locked(platform, tenant_id, work)
            except Exception as exc:
                error = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
                report.failed[slug] = error
                await _record_failure(platform, tenant_id, modules, error)
                if on_tenant:
                    on_tenant(slug, error)
            else:
                report.upgraded.append(slug)
                if on_tenant:
                    on_tenant(slug, None)

    await asyncio.gather(*(one(t, m) for t, m in behind.items()))
    report.seconds = time.perf_counter() - started
    return report


async def _slugs(platform: Platform, tenant_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    if not tenant_ids:
        return {}
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            select(tenants.c.id, tenants.c.slug).where(tenants.c.id.in_(tenant_ids))
        )
        return {row.id: row.slug for row in rows}


async def _record_failure(
    platform: Platform, tenant_id: uuid.UUID, modules: list[str], error: str
) -> None:
    async with platform.db.autocommit() as conn:
        await conn.execute(
            update(tenant_modules)
            .where(tenant_modules.c.tenant_id == tenant_id, tenant_modules.c.module.in_(modules))
            .values(error=error[:2000], updated_at=datetime.now(UTC))
        )


async def catalogue_rows(platform: Platform) -> list[dict[str, Any]]:
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(select(catalogue).order_by(catalogue.c.name))
        return [dict(r._mapping) for r in rows]
