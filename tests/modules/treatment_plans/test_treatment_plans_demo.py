"""The demo data of the odontogram and treatment plans: it runs on a clinic with patients
and a catalog, and what it makes is what the API would make."""

from __future__ import annotations

from sqlalchemy import func, insert, select

from dentalpin.modules.odontogram import OdontogramModule
from dentalpin.modules.odontogram.models import entries
from dentalpin.modules.patients.models import patients
from dentalpin.modules.treatment_plans import TreatmentPlansModule
from dentalpin.modules.treatment_plans.models import items, plans, quotes
from dentalpin.platform import LifecycleContext
from tests.modules.odontogram.clinic import make_clinic


async def _log(line: str) -> None:
    return None


async def test_demo_charts_and_plans(platform):
    clinic = await make_clinic(platform, "demo")
    async with platform.db.tenant(clinic.tenant.scope) as s:
        await s.execute(
            insert(patients),
            [{"given_name": f"Paciente {i}", "family_name": "Demo"} for i in range(150)],
        )
        ctx = LifecycleContext(tenant=clinic.tenant.ref, session=s, settings={}, log=_log)
        await OdontogramModule().demo(ctx)
        await TreatmentPlansModule().demo(ctx)
    # Completed plan items reach the chart through `treatment_plans.item_completed`, on the
    # relay's own time: wait for it, or the count depends on how fast this machine is.
    await platform.nudge.drain()
    async with platform.db.tenant(clinic.tenant.scope) as s:
        charted = await s.scalar(
            select(func.count(func.distinct(entries.c.patient_id))).where(
                entries.c.source == "manual"
            )
        )
        assert charted == 51  # one patient in three of 152
        performed = await s.scalar(
            select(func.sum(func.jsonb_array_length(items.c.teeth))).where(
                items.c.status == "completed", items.c.chart_condition.is_not(None)
            )
        )
        from_plans = await s.scalar(
            select(func.count()).where(entries.c.source == "treatment_plan")
        )
        assert performed > 0
        assert from_plans == performed  # one entry per tooth of every completed item
        statuses = dict(
            (await s.execute(select(plans.c.status, func.count()).group_by(plans.c.status))).all()
        )
        assert statuses == {
            "draft": 4,
            "proposed": 4,
            "accepted": 4,
            "in_progress": statuses.get("in_progress", 0),
            "completed": 4 + (4 - statuses.get("in_progress", 0)),
            "rejected": 4,
        }
        assert await s.scalar(select(func.count()).select_from(quotes)) == 20
