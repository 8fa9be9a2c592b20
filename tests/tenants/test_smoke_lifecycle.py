from __future__ import annotations

from sqlalchemy import text

from dentalpin.platform._jobs import get_job, submit, executor_of
from dentalpin.tenants import create_tenant, find_tenant, module_states


async def test_create_install_uninstall_restore(platform, slug):
    tenant = await create_tenant(platform, slug, "Smoke Clinic")
    async with platform.db.engine.connect() as conn:
        states = await module_states(conn, tenant.id)
    assert states["fx_people"]["state"] == "installed"
    job = await submit(platform, "lifecycle.install", tenant.id, {"modules": ["recall"]})
    job = await executor_of(platform).wait(platform, job.id)
    assert job.state == "succeeded", job.error
    async with platform.db.tenant(tenant.scope) as s:
        await s.execute(text("insert into people (name, kind) values ('Ana', 'patient')"))
        await s.execute(text("insert into recall_reminders (person_id, due_on) select id, current_date from people"))
    job = await submit(platform, "lifecycle.uninstall", tenant.id, {"module": "fx_people", "cascade": True})
    job = await executor_of(platform).wait(platform, job.id)
    assert job.state == "succeeded", job.error
    print(job.result)
    job = await submit(platform, "lifecycle.restore", tenant.id, {"module": "fx_people"})
    job = await executor_of(platform).wait(platform, job.id)
    assert job.state == "succeeded", job.error
    async with platform.db.tenant(tenant.scope) as s:
        assert (await s.execute(text("select count(*) from people"))).scalar() == 2
