"""Uninstall and restore keep charts and plans: install -> rows -> uninstall (archived,
tables gone, routes 404) -> restore (every row back, the log still append-only)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.modules.odontogram.clinic import PLANS, make_clinic
from tests.platform.identity import run_job


async def table_exists(platform, tenant, name: str) -> bool:
    async with platform.db.tenant(tenant.scope) as s:
        return bool(await s.scalar(text("select to_regclass(:n) is not null"), {"n": name}))


async def test_uninstall_and_restore_keep_charts_and_plans(platform):
    clinic = await make_clinic(platform, "plans-rt")
    dentist = clinic.as_("dentist")
    async with clinic.http() as http:
        entry = await clinic.entry(
            http, kind="condition", tooth=36, surfaces=["O"], condition="caries"
        )
        assert entry.status_code == 201
        plan = await http.post(
            f"{PLANS}/plans",
            json={
                "patient_id": str(clinic.patient),
                "title": "Obturación 36",
                "items": [
                    {
                        "catalog_item_id": str(clinic.treatments["filling"]),
                        "teeth": [36],
                        "surfaces": ["O"],
                        "chart_condition": "filling",
                    }
                ],
            },
            headers=dentist,
        )
        plan_id = plan.json()["id"]
        quote = await http.post(f"{PLANS}/plans/{plan_id}/propose", json={}, headers=dentist)
        assert quote.status_code == 201
        chart_before = (await http.get(f"{clinic.chart()}/chart", headers=dentist)).json()
        plan_before = (await http.get(f"{PLANS}/plans/{plan_id}", headers=dentist)).json()

    job = await run_job(
        platform, "lifecycle.uninstall", clinic.tenant, module="odontogram", cascade=True
    )
    assert job.state == "succeeded", job.error
    assert job.result["modules"] == ["treatment_plans", "odontogram"]
    assert job.result["tables"]["odontogram"] == {"odontogram_entries": 1}
    assert not await table_exists(platform, clinic.tenant, "odontogram_entries")
    assert not await table_exists(platform, clinic.tenant, "treatment_plans_plans")
    async with clinic.http() as http:
        gone = await http.get(f"{clinic.chart()}/chart", headers=dentist)
        assert gone.status_code == 404

    for module in ("odontogram", "treatment_plans"):
        job = await run_job(platform, "lifecycle.restore", clinic.tenant, module=module)
        assert job.state == "succeeded", job.error
    async with clinic.http() as http:
        assert (await http.get(f"{clinic.chart()}/chart", headers=dentist)).json() == chart_before
        assert (await http.get(f"{PLANS}/plans/{plan_id}", headers=dentist)).json() == plan_before
        # New entries continue the log's sequence after the restored ones.
        more = await clinic.entry(http, kind="condition", tooth=11, condition="crown")
        assert more.json()["seq"] == entry.json()["seq"] + 1
    with pytest.raises(DBAPIError, match="append-only"):
        async with platform.db.tenant(clinic.tenant.scope) as s:
            await s.execute(text("delete from odontogram_entries"))
