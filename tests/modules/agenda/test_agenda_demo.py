"""The demo clinic's agenda: professionals with split shifts and a plausible week."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select

from dentalpin.modules.agenda import AgendaModule
from dentalpin.modules.agenda.models import (
    appointment_items,
    appointments,
    professionals,
    status_changes,
    working_hours,
)
from dentalpin.modules.catalog.models import items
from dentalpin.modules.locations.models import cabinets, locations
from dentalpin.modules.patients.models import patients
from dentalpin.platform import LifecycleContext
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug


async def test_the_demo_books_a_week_without_clashes(platform):
    tenant = await create_tenant(platform, unique_slug("demo-agenda"))
    logged: list[str] = []

    async def log(line: str) -> None:
        logged.append(line)

    async with platform.db.tenant(tenant.scope) as s:
        site = await s.scalar(select(locations.c.id).where(locations.c.is_default))
        await s.execute(
            insert(cabinets), [{"location_id": site, "name": f"Gabinete {n}"} for n in (1, 2, 3)]
        )
        await s.execute(
            insert(patients),
            [{"given_name": f"Paciente {n}", "family_name": "Demo"} for n in range(40)],
        )
        await s.execute(
            insert(items),
            [
                {"code": f"D{n}", "name": f"Tratamiento {n}", "duration_minutes": 15 * (n + 1)}
                for n in range(4)
            ],
        )
        ctx = LifecycleContext(tenant=tenant.ref, session=s, settings={}, log=log)
        await AgendaModule().demo(ctx)
        await AgendaModule().demo(ctx)  # a second run adds nothing
        pros = await s.scalar(select(func.count()).select_from(professionals))
        shifts = await s.scalar(select(func.count()).select_from(working_hours))
        booked = (await s.execute(select(appointments))).all()
        lines = await s.scalar(select(func.count()).select_from(appointment_items))
        history = (
            await s.execute(
                select(status_changes).order_by(
                    status_changes.c.appointment_id, status_changes.c.changed_at
                )
            )
        ).all()
    assert pros == 3 and shifts == 3 * 5 * 2  # one per cabinet, Monday to Friday, two shifts
    assert len(booked) > 3 * 5 * 8 and lines == len(booked)
    now = datetime.now(UTC)
    monday = now.date() - timedelta(days=now.weekday())
    assert all(
        monday - timedelta(days=1) <= a.starts_at.date() <= monday + timedelta(days=5)
        for a in booked
    )
    for a in booked:
        if a.ends_at <= now:
            assert a.status in ("completed", "no_show", "cancelled")
        else:
            assert a.status in ("scheduled", "confirmed", "cancelled")
    # The history of each appointment ends in its status.
    last = {h.appointment_id: h.to_status for h in history}
    assert all(last[a.id] == a.status for a in booked)
    assert Counter(h.from_status is None for h in history)[True] == len(booked)
    assert any("appointments" in line for line in logged)
