"""Periodic jobs: claimed once per interval, fanned out in chunks over the tenants that
have the module, each tenant in its own transaction (fx_ledger_watch's `tally`)."""

from __future__ import annotations

import asyncio
from typing import Any

from dentalpin_worker_fixtures.fx_ledger import add_entry
from sqlalchemy import text

from dentalpin.platform import Manifest, Module, Periodic, PeriodicContext
from dentalpin.platform._periodic import run_chunk, tick
from dentalpin.platform._registry import Registry
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, create_tenant
from tests.conftest import unique_slug
from tests.platform.test_events import with_settings
from tests.tenants.test_lifecycle import run_job


async def ticks(platform: Platform, tenant: TenantRecord) -> list[Any]:
    async with platform.db.tenant(tenant.scope) as s:
        return list(await s.execute(text("select * from ledger_ticks")))


async def test_a_due_job_fans_out_in_chunks_over_the_tenants_that_have_it(fresh_platform):
    platform = with_settings(fresh_platform, periodic_chunk=2)
    try:
        watching = [
            await create_tenant(
                platform, unique_slug("tick"), modules=["fx_ledger", "fx_ledger_watch"]
            )
            for _ in range(5)
        ]
        without = await create_tenant(platform, unique_slug("notick"), modules=["fx_ledger"])

        chunks = [c for c in await tick(platform) if c.job == "tally"]
        assert [len(c.tenant_ids) for c in chunks] == [2, 2, 1]
        assert {t for c in chunks for t in c.tenant_ids} == {str(t.id) for t in watching}
        assert str(without.id) not in {t for c in chunks for t in c.tenant_ids}
        assert all(0 <= c.delay_s <= 0.2 for c in chunks)
        assert len({c.due_at for c in chunks}) == 1
        # Claimed: a second tick within the interval finds nothing due.
        assert [c for c in await tick(platform) if c.job == "tally"] == []
        await asyncio.sleep(1.05)
        assert [c for c in await tick(platform) if c.job == "tally"] != []

        # One tenant's failure is its own; the others run.
        async with platform.db.tenant(watching[0].scope) as s:
            await add_entry(s, "tick-fail")
        # Uninstalled after the fan-out: skipped, not run.
        job = await run_job(platform, "lifecycle.uninstall", watching[1], module="fx_ledger_watch")
        assert job.state == "succeeded", job.error
        reports = [
            await run_chunk(platform, c.module, c.job, c.tenant_ids, c.due_at) for c in chunks
        ]
        assert sum(r.ran for r in reports) == 3
        failed = {slug: why for r in reports for slug, why in (r.failed or {}).items()}
        assert list(failed) == [watching[0].slug] and "tally is broken" in failed[watching[0].slug]
        for tenant in watching[2:]:
            rows = await ticks(platform, tenant)
            assert [r.due_at.isoformat() for r in rows] == [chunks[0].due_at]
        assert await ticks(platform, watching[0]) == []
    finally:
        await platform.close()


def test_a_malformed_periodic_job_quarantines_its_module():
    async def noop(ctx: PeriodicContext) -> None:
        return None

    class Hasty(Module):
        manifest = Manifest(
            name="fx_hasty",
            version="1.0.0",
            summary="runs too often",
            author="t",
            license="MIT",
            category="other",
            core=">=0.1,<1",
        )

        def periodic(self) -> dict[str, Periodic]:
            return {"Bad Name": Periodic(every_s=0.1, handler=noop)}

    registry = Registry.from_classes([Hasty])
    reason = registry.quarantined["fx_hasty"].reason
    assert "lower-case" in reason and "at least 1 second" in reason
