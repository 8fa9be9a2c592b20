"""The demo data of the odontogram and treatment plans: it runs on a clinic with patients
and a catalog, and what it makes is what the API would make."""

from __future__ import annotations

from sqlalchemy import func, insert, select

from dentalpin.modules.odontogram import OdontogramModule
from dentalpin.modules.odontogram.models import entries
from dentalpin.modules.patients.models import patients
from dentalpin.modules.treatment_plans import TreatmentPlansModule
from dentalpin.modules.treatment_plans.models import plans, quotes
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
    async with platform.db.tenant(clinic.tenant.scope) as s:
        charted = await s.scalar(select(func.count(func.distinct(entries.c.patient_id))))
        assert charted == 51  # one patient in three of 152
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
