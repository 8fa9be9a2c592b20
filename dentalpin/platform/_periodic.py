"""Periodic jobs: declared by modules, run once per interval in every tenant that has them.

Beat sends one task, `dentalpin.periodic.tick`, every `periodic_tick_s`. The tick claims
the jobs that are due in `platform.periodic_runs` (an UPDATE fenced on the last run, so
two ticks — a second beat started by mistake — never both run a job), then fans each out:
the tenants that have the module installed (one query) are cut into chunks, and each
chunk is sent as a task with a random delay within the job's spread, so a fleet of
clinics does not wake up in the same second. Each tenant runs in its own transaction;
one tenant's failure is logged and does not stop the others.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text

from ._db import TenantScope
from ._module import TenantRef
from ._tables import tenant_modules, tenants

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from ._runtime import Platform

log = logging.getLogger(__name__)

JOB_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


@dataclass(frozen=True)
class PeriodicContext:
    """What a periodic handler gets: a session confined to one tenant, and the run's time
    (the same for every tenant of one run; use it, not the clock, for "what is due")."""

    session: AsyncSession
    tenant: TenantRef
    job: str
    due_at: datetime


PeriodicHandler = Callable[[PeriodicContext], Awaitable[None]]


@dataclass(frozen=True)
class Periodic:
    """A job a module runs in each of its tenants every `every_s` seconds."""

    every_s: float
    handler: PeriodicHandler
    spread_s: float | None = None
    """Tenants' runs are spread at random over this window (default: a tenth of the
    interval, at most five minutes)."""

    @property
    def spread(self) -> float:
        return self.spread_s if self.spread_s is not None else min(self.every_s / 10, 300.0)


def check_periodic(module: str, jobs: dict[str, Periodic]) -> list[str]:
    problems = []
    for name, job in jobs.items():
        if not name or not set(name) <= JOB_NAME_CHARS or not name[0].isalpha():
            problems.append(f"periodic job '{name}': use lower-case letters, digits and '_'")
        if not isinstance(job, Periodic):
            problems.append(f"periodic job '{name}' is not a dentalpin.platform.Periodic")
        elif job.every_s < 1:
            problems.append(f"periodic job '{name}': every_s must be at least 1 second")
    return problems


@dataclass(frozen=True)
class Chunk:
    module: str
    job: str
    tenant_ids: list[str]
    due_at: str
    delay_s: float

    def as_args(self) -> list[Any]:
        return [self.module, self.job, self.tenant_ids, self.due_at]


async def tick(platform: Platform) -> list[Chunk]:
    """Claim the due jobs and cut their tenants into chunks (the caller sends them)."""
    chunks: list[Chunk] = []
    for module, job, due_at in await _claim_due(platform):
        spec = platform.registry.get(module).module.periodic()[job]
        ids = [str(t.id) for t in await _tenants_with(platform, module)]
        size = platform.settings.periodic_chunk
        for start in range(0, len(ids), size):
            chunks.append(
                Chunk(
                    module,
                    job,
                    ids[start : start + size],
                    due_at.isoformat(),
                    random.uniform(0, spec.spread),  # noqa: S311 - jitter, not secrecy
                )
            )
    return chunks


async def _claim_due(platform: Platform) -> list[tuple[str, str, datetime]]:
    jobs = [
        (spec.name, name, job.every_s)
        for spec in platform.registry
        for name, job in spec.module.periodic().items()
    ]
    claimed = []
    async with platform.db.platform() as session:
        for module, job, every_s in jobs:
            await session.execute(
                text(
                    "insert into platform.periodic_runs (module, job, last_run_at) "
                    "values (:m, :j, '-infinity') on conflict do nothing"
                ),
                {"m": module, "j": job},
            )
            row = (
                await session.execute(
                    text(
                        "update platform.periodic_runs set last_run_at = now() "
                        "where module = :m and job = :j "
                        "and last_run_at <= now() - make_interval(secs => :every) "
                        "returning last_run_at"
                    ),
                    {"m": module, "j": job, "every": every_s},
                )
            ).first()
            if row is not None:
                claimed.append((module, job, row.last_run_at))
    return claimed


@dataclass
class ChunkReport:
    ran: int = 0
    failed: dict[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ran": self.ran, "failed": self.failed or {}}


async def run_chunk(
    platform: Platform, module: str, job: str, tenant_ids: list[str], due_at: str
) -> ChunkReport:
    """Run one job in each tenant of a chunk that still has the module installed."""
    report = ChunkReport()
    if module not in platform.registry:
        log.warning("periodic %s.%s: module is not available here; chunk skipped", module, job)
        return report
    spec = platform.registry.get(module).module.periodic().get(job)
    if spec is None:
        return report
    due = datetime.fromisoformat(due_at)
    # Uninstalled since the fan-out: skipped.
    for ref in await _tenants_with(platform, module, tenant_ids):
        try:
            async with platform.db.tenant(TenantScope(ref.schema, ref.role)) as session:
                await spec.handler(PeriodicContext(session, ref, job, due))
            report.ran += 1
        except Exception as exc:
            log.exception("periodic %s.%s failed for tenant %s", module, job, ref.slug)
            report.failed = {**(report.failed or {}), ref.slug: f"{type(exc).__name__}: {exc}"}
    return report


async def _tenants_with(
    platform: Platform, module: str, among: list[str] | None = None
) -> list[TenantRef]:
    """The active tenants that have `module` installed (of `among`, when given)."""
    query = (
        select(
            tenants.c.id, tenants.c.slug, tenants.c.name, tenants.c.schema_name, tenants.c.db_role
        )
        .join(tenant_modules, tenant_modules.c.tenant_id == tenants.c.id)
        .where(
            tenants.c.status == "active",
            tenant_modules.c.module == module,
            tenant_modules.c.state == "installed",
        )
        .order_by(tenants.c.id)
    )
    if among is not None:
        query = query.where(tenants.c.id.in_([uuid.UUID(t) for t in among]))
    async with platform.db.autocommit() as conn:
        rows = await conn.execute(query)
        return [TenantRef(r.id, r.slug, r.name, r.schema_name, r.db_role) for r in rows]
