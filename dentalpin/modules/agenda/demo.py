"""Demo data: the demo clinic's professionals, their split shifts (the Spanish 9-14 / 16-20
day) and a week of appointments around today, in bulk inserts.

Runs after the locations, patients and catalog demos (dependency order), and uses what
they created: live locations and their cabinets, patients, active catalog items.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from dentalpin.modules.catalog.models import items
from dentalpin.modules.locations.models import cabinets, locations
from dentalpin.modules.patients.models import patients
from dentalpin.platform import LifecycleContext

from .models import appointment_items, appointments, professionals, status_changes, working_hours
from .service import zone_of

STAFF = (
    ("Dra. Carmen López Vidal", "#2a9d8f"),
    ("Dr. Javier Moreno Sanz", "#e76f51"),
    ("Dra. Lucía Fernández Gil", "#264653"),
    ("Marta Ruiz Ortega (higienista)", "#f4a261"),
    ("Dr. Andrés Navarro Pons", "#8e44ad"),
    ("Elena Castro Prieto (higienista)", "#e9c46a"),
)
SHIFTS = ((time(9), time(14)), (time(16), time(20)))
DEMO_NAMESPACE = uuid.UUID("7d2b8c1e-5a0f-4c3e-9b1d-2f6a8e4c0d17")
"""Demo professionals have no login; their user ids are stable names in this namespace."""

# Past appointments mostly happened; future ones are mostly confirmed the day before.
PAST = (("completed", 0.86), ("no_show", 0.06), ("cancelled", 0.08))
FUTURE = (("scheduled", 0.55), ("confirmed", 0.4), ("cancelled", 0.05))
WHEN: dict[str, Callable[[timedelta], timedelta]] = {
    # When each status was reached, relative to the start, given the appointment's length.
    "scheduled": lambda _: timedelta(days=-7),
    "confirmed": lambda _: timedelta(days=-1),
    "cancelled": lambda _: timedelta(hours=-20),
    "checked_in": lambda _: timedelta(minutes=-5),
    "in_treatment": lambda _: timedelta(0),
    "completed": lambda length: length,
    "no_show": lambda _: timedelta(minutes=15),
}
PATHS = {
    "scheduled": ["scheduled"],
    "confirmed": ["scheduled", "confirmed"],
    "cancelled": ["scheduled", "cancelled"],
    "no_show": ["scheduled", "confirmed", "no_show"],
    "completed": ["scheduled", "confirmed", "checked_in", "in_treatment", "completed"],
}


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([s for s, _ in weighted], [w for _, w in weighted])[0]


async def _catalogue(session: AsyncSession) -> list[tuple[uuid.UUID, int]]:
    rows = await session.execute(
        select(items.c.id, items.c.duration_minutes)
        .where(items.c.active, items.c.duration_minutes <= 90)
        .order_by(items.c.code)
    )
    return [(r.id, int(r.duration_minutes)) for r in rows]


async def _sites(session: AsyncSession) -> list[tuple[Any, list[uuid.UUID]]]:
    sites = []
    for location in await session.execute(
        select(locations).where(locations.c.archived_at.is_(None)).order_by(locations.c.name)
    ):
        rooms = list(
            (
                await session.execute(
                    select(cabinets.c.id)
                    .where(cabinets.c.location_id == location.id, cabinets.c.active)
                    .order_by(cabinets.c.name)
                )
            ).scalars()
        )
        if rooms:
            sites.append((location, rooms))
    return sites


async def _staff(
    session: AsyncSession, sites: list[tuple[Any, list[uuid.UUID]]]
) -> list[tuple[uuid.UUID, Any, uuid.UUID]]:
    """Professionals, each working Monday to Friday at one site in one cabinet of it."""
    rows, hours, placed = [], [], []
    slots = [(site, room) for site, rooms in sites for room in rooms]
    for n, (name, color) in enumerate(STAFF[: len(slots)]):
        site, room = slots[n]
        pro_id = uuid.uuid4()
        rows.append(
            {
                "id": pro_id,
                "user_id": uuid.uuid5(DEMO_NAMESPACE, name),
                "display_name": name,
                "color": color,
            }
        )
        hours += [
            {
                "professional_id": pro_id,
                "location_id": site.id,
                "weekday": day,
                "starts_at": opens,
                "ends_at": closes,
            }
            for day in range(1, 6)
            for opens, closes in SHIFTS
        ]
        placed.append((pro_id, site, room))
    await session.execute(insert(professionals), rows)
    await session.execute(insert(working_hours), hours)
    return placed


def _week(today: date) -> list[date]:
    monday = today - timedelta(days=today.weekday())
    return [monday + timedelta(days=n) for n in range(5)]


async def demo(ctx: LifecycleContext) -> None:
    session = ctx.session
    if await session.scalar(select(func.count()).select_from(professionals)):
        return  # the demo ran already
    sites = await _sites(session)
    treatments = await _catalogue(session)
    patient_ids = list((await session.execute(select(patients.c.id))).scalars())
    if not sites or not treatments or not patient_ids:
        await ctx.log("agenda demo: no cabinets, treatments or patients to book; skipped")
        return
    staff = await _staff(session, sites)
    rng = random.Random(20240301)  # noqa: S311 - sample data, reproducible on purpose
    now = datetime.now(UTC)
    booked: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    for pro_id, site, room in staff:
        zone = zone_of(site.timezone)
        for day in _week(now.astimezone(zone).date()):
            for opens, closes in SHIFTS:
                start = datetime.combine(day, opens, zone)
                end_of_shift = datetime.combine(day, closes, zone)
                while True:
                    start += timedelta(minutes=rng.choice((0, 0, 0, 15, 30)))
                    item, minutes = rng.choice(treatments)
                    ends = start + timedelta(minutes=max(minutes, 15))
                    if ends > end_of_shift:
                        break
                    status = _pick(rng, PAST if ends <= now else FUTURE)
                    appointment_id = uuid.uuid4()
                    booked.append(
                        {
                            "id": appointment_id,
                            "patient_id": rng.choice(patient_ids),
                            "professional_id": pro_id,
                            "cabinet_id": room,
                            "location_id": site.id,
                            "starts_at": start,
                            "ends_at": ends,
                            "status": status,
                        }
                    )
                    lines.append({"appointment_id": appointment_id, "position": 1, "item_id": item})
                    path = PATHS[status]
                    history += [
                        {
                            "appointment_id": appointment_id,
                            "from_status": before,
                            "to_status": after,
                            "changed_at": min(now, start + WHEN[after](ends - start)),
                        }
                        for before, after in zip([None, *path], path, strict=False)
                    ]
                    start = ends
    await session.execute(insert(appointments), booked)
    await session.execute(insert(appointment_items), lines)
    await session.execute(insert(status_changes), history)
    await ctx.log(f"agenda demo: {len(staff)} professionals, {len(booked)} appointments")
