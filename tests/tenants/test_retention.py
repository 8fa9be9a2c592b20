from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update

from dentalpin.platform._jobs import executor_of, submit
from dentalpin.platform._tables import archives
from dentalpin.tenants import create_tenant
from dentalpin.tenants._retention import list_archives, prune_archives
from tests.conftest import unique_slug


async def test_only_expired_archives_are_pruned(platform):
    tenant = await create_tenant(platform, unique_slug("retain"), modules=["recall"])
    ids = []
    for module in ("recall", "fx_people"):
        job = await submit(platform, "lifecycle.uninstall", tenant.id, {"module": module})
        job = await executor_of(platform).wait(platform, job.id)
        assert job.state == "succeeded", job.error
        ids.append(job.result["archives"][module])
    listed = await list_archives(platform, tenant.id)
    assert {a["id"] for a in listed} == set(ids)
    assert all(a["key"] for a in listed)

    async with platform.db.engine.begin() as conn:
        await conn.execute(
            update(archives)
            .where(archives.c.id == ids[0])
            .values(expires_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
        expired_path = Path(
            (
                await conn.execute(select(archives.c.path).where(archives.c.id == ids[0]))
            ).scalar_one()
        )
    preview = await prune_archives(platform, dry_run=True)
    assert ids[0] in [p["id"] for p in preview] and expired_path.exists()
    pruned = await prune_archives(platform)
    assert ids[0] in [p["id"] for p in pruned] and ids[1] not in [p["id"] for p in pruned]
    assert not expired_path.exists()
    assert [a["id"] for a in await list_archives(platform, tenant.id)] == [ids[1]]
