"""The agenda publishes its events in the transaction of the change: into the clinic's
outbox when the change commits, never when it is refused."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.modules.agenda.world import World, at, make_world

APPOINTMENTS = "/api/v1/agenda/appointments"


@pytest.fixture(scope="module")
async def world(platform) -> World:
    return await make_world(platform, "evt")


async def outbox(world: World, appointment_id: str) -> list[tuple[str, dict]]:
    async with world.platform.db.tenant(world.tenant.scope) as s:
        found = await s.execute(
            text(
                "select name, payload from _outbox "
                "where payload->>'appointment_id' = :a order by seq"
            ),
            {"a": appointment_id},
        )
        return [(r.name, r.payload) for r in found]


async def bookings(world: World) -> int:
    async with world.platform.db.tenant(world.tenant.scope) as s:
        found = await s.scalar(
            text("select count(*) from _outbox where name = 'agenda.appointment_booked'")
        )
    return int(found or 0)


async def test_booking_moving_and_every_status_change_publish_an_event(world: World):
    receptionist = world.tokens["receptionist"]
    async with world.http() as http:
        booked = (
            await http.post(
                APPOINTMENTS, json=world.booking(starts_at=at("09:00")), headers=receptionist
            )
        ).json()
        url = f"{APPOINTMENTS}/{booked['id']}"
        moved = await http.patch(
            url, json={"starts_at": at("10:00")}, headers={**receptionist, "if-match": '"1"'}
        )
        assert moved.status_code == 200, moved.text
        # Changing only the notes is no reschedule.
        noted = await http.patch(
            url,
            json={"notes": "Sensibilidad"},
            headers={**world.tokens["dentist"], "if-match": '"2"'},
        )
        assert noted.status_code == 200, noted.text
        for status in ("confirmed", "checked_in", "in_treatment", "completed"):
            changed = await http.post(
                f"{url}/status", json={"status": status}, headers=world.tokens["dentist"]
            )
            assert changed.status_code == 200, changed.text
        refused = await http.post(
            f"{url}/status", json={"status": "cancelled"}, headers=receptionist
        )
        assert refused.status_code == 409
    events = await outbox(world, booked["id"])
    assert [name for name, _ in events] == [
        "agenda.appointment_booked",
        "agenda.appointment_rescheduled",
        "agenda.appointment_confirmed",
        "agenda.appointment_checked_in",
        "agenda.appointment_started",
        "agenda.appointment_completed",
    ]
    first, rescheduled, *_, completed = (payload for _, payload in events)
    assert first["patient_id"] == str(world.patient)
    assert first["professional_id"] == str(world.pros["dentist"])
    assert first["status"] == "scheduled"
    assert first["changed_by"] == str(world.users["receptionist"])
    assert rescheduled["previous_starts_at"].startswith("2030-01-07T08:00:00")
    assert rescheduled["starts_at"].startswith("2030-01-07T09:00:00")
    assert completed["from_status"] == "in_treatment" and completed["status"] == "completed"
    assert "notes" not in str(events) and "Sensibilidad" not in str(events)


async def test_a_refused_booking_publishes_nothing(world: World):
    receptionist = world.tokens["receptionist"]
    booked_before = await bookings(world)
    async with world.http() as http:
        taken = (
            await http.post(
                APPOINTMENTS, json=world.booking(starts_at=at("12:00")), headers=receptionist
            )
        ).json()
        clash = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at("12:00"), cabinet_id=world.cab_a2),
            headers=receptionist,
        )
        assert clash.status_code == 409
        cancelled = await http.post(
            f"{APPOINTMENTS}/{taken['id']}/status",
            json={"status": "cancelled", "reason": "llamó para anular"},
            headers=receptionist,
        )
        assert cancelled.status_code == 200
    events = await outbox(world, taken["id"])
    assert [name for name, _ in events] == [
        "agenda.appointment_booked",
        "agenda.appointment_cancelled",
    ]
    assert events[1][1]["reason"] == "llamó para anular"
    assert await bookings(world) == booked_before + 1  # not 2: the clash published nothing
