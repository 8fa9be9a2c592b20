"""Fleet migrations: the platform schema, the module catalogue, then every tenant that is behind.

Which tenants are behind is one query on `platform.tenant_modules` against the
code's heads; each is upgraded in its own transaction with bounded concurrency,
and a failing tenant is recorded and isolated while the others proceed. The
upgrades run in this process (`upgrade_fleet`) or as one `fleet.upgrade` job per
tenant on the workers (`upgrade_fleet_on_workers`); both share `_fan_out`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, bindparam, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from dentalpin.platform import Conflict, InvalidInput, PlatformError
from dentalpin.platform._jobs import (
    Executor,
    JobRecord,
    JobRecorder,
    executor_of,
    get_job,
    job_kind,
    submit,
    withdraw_queued,
)
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import modules as catalogue
from dentalpin.platform._tables import tenant_modules, tenants

from ._catalogue import SPARE
from ._lifecycle import Log, Operation, Progress, _quiet, upgrade
from ._lineage import lineages
from ._operations import run_locked

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "platform" / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def platform_head() -> str | None:
    """The platform schema's head revision in this code."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


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
          join platform.tenants t on t.id = tm.tenant_id and t.status in ('active', 'spare')
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


TenantUpgrade = Callable[[uuid.UUID, list[str]], Awaitable[object]]
FLEET_UPGRADE = "fleet.upgrade"


async def upgrade_tenant(
    platform: Platform,
    tenant_id: uuid.UUID,
    modules: list[str] | None,
    log: Log = _quiet,
    progress: Progress = _quiet,
) -> list[dict[str, Any]]:
    """Upgrade one tenant's modules (all installed ones with None) in its own transaction."""

    async def work(op: Operation) -> list[dict[str, Any]]:
        return await upgrade(op, modules)

    # Spares are upgraded with the fleet (migrations only), so they stay claimable.
    return await run_locked(platform, tenant_id, work, log, progress, ("active", SPARE))


async def upgrade_fleet(
    platform: Platform,
    concurrency: int = 4,
    on_tenant: Callable[[str, str | None], None] | None = None,
) -> FleetReport:
    """Upgrade every tenant that is behind, `concurrency` at a time, in this process."""

    async def here(tenant_id: uuid.UUID, modules: list[str]) -> object:
        return await upgrade_tenant(platform, tenant_id, modules)

    return await _fan_out(platform, concurrency, on_tenant, here)


async def upgrade_fleet_on_workers(
    platform: Platform,
    concurrency: int = 4,
    on_tenant: Callable[[str, str | None], None] | None = None,
    executor: Executor | None = None,
    claim_within_s: float = 60.0,
) -> FleetReport:
    """Upgrade every tenant that is behind through the workers: one `fleet.upgrade` job per
    tenant on the `lifecycle` queue, at most `concurrency` of them in flight. Failures are
    recorded and reported exactly as by `upgrade_fleet`.

    Each job names the revision and version this code expects for every module; a worker
    running other code (a rolling deploy) refuses it instead of upgrading to its own heads.
    A job no worker claims within `claim_within_s` fails, and so does every tenant after
    it, at once: with no worker on the queue the command ends instead of waiting forever.
    """
    code = code_versions(platform)
    chosen = executor or executor_of(platform)
    no_worker: list[str] = []

    async def there(tenant_id: uuid.UUID, modules: list[str]) -> object:
        if no_worker:
            raise PlatformError(no_worker[0])
        job = await submit(
            platform,
            FLEET_UPGRADE,
            tenant_id,
            {"modules": modules, "code": {m: code[m] for m in modules}},
            chosen,
        )
        done = await _wait_claimed(platform, chosen, job.id, claim_within_s, no_worker)
        if done.state != "succeeded":
            raise PlatformError(done.error or f"job {job.id} ended {done.state}")
        return done.result

    return await _fan_out(platform, concurrency, on_tenant, there)


async def _wait_claimed(
    platform: Platform,
    executor: Executor,
    job_id: uuid.UUID,
    claim_within_s: float,
    no_worker: list[str],
) -> JobRecord:
    """Wait for a job; if nobody claims it in time, withdraw it (still queued) and say why."""
    deadline = time.monotonic() + claim_within_s
    delay = 0.02
    while True:
        job = await get_job(platform, job_id)
        if job.state != "queued":
            return await executor.wait(platform, job_id)
        if time.monotonic() > deadline:
            error = (
                f"no worker took the job within {claim_within_s:g}s: is `dentalpin worker` "
                "running on the lifecycle queue? (`dentalpin migrate --in-process` upgrades "
                "the tenants without workers)"
            )
            if await withdraw_queued(platform, job_id, error):
                no_worker.append(error)
                return await get_job(platform, job_id)
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def code_versions(platform: Platform) -> dict[str, list[str | None]]:
    """[head revision, version] of every module, as this process's code has them."""
    heads = module_heads(platform)
    return {s.name: [heads.get(s.name), s.manifest.version] for s in platform.registry}


@job_kind(FLEET_UPGRADE)
async def _fleet_upgrade_job(
    platform: Platform, job: JobRecord, rec: JobRecorder
) -> dict[str, Any]:
    if job.tenant_id is None:
        raise InvalidInput(f"job {job.id} has no tenant")
    wanted: dict[str, list[str | None]] = job.params.get("code") or {}
    mine = code_versions(platform)
    differs = {m: (mine.get(m), v) for m, v in wanted.items() if mine.get(m) != list(v)}
    if differs:
        detail = "; ".join(
            f"{m}: worker has {h}, migrate wants {w}" for m, (h, w) in differs.items()
        )
        raise Conflict(
            f"this worker runs other module code than `dentalpin migrate` ({detail}); "
            "restart the workers on the new release, or run `dentalpin migrate --in-process`"
        )
    modules = job.params.get("modules")
    return {
        "upgraded": await upgrade_tenant(platform, job.tenant_id, modules, rec.log, rec.progress)
    }


async def _fan_out(
    platform: Platform,
    concurrency: int,
    on_tenant: Callable[[str, str | None], None] | None,
    upgrade_one: TenantUpgrade,
) -> FleetReport:
    """Run `upgrade_one` for every tenant that is behind, `concurrency` at a time; a
    failure is written to that tenant's modules and reported, the others proceed."""
    started = time.perf_counter()
    behind = await tenants_behind(platform)
    slugs = await _slugs(platform, list(behind))
    report = FleetReport(behind=len(behind))
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(tenant_id: uuid.UUID, modules: list[str]) -> None:
        async with gate:
            slug = slugs.get(tenant_id, str(tenant_id))
            try:
                await upgrade_one(tenant_id, modules)
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
