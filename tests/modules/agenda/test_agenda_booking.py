"""Booking: what an appointment needs, and no double booking of a professional or a
cabinet, enforced by PostgreSQL even when two bookings race."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from dentalpin.modules.agenda.models import appointments, status_changes
from dentalpin.modules.locations.models import cabinets
from dentalpin.modules.patients.models import patients
from tests.modules.agenda.world import World, at, make_world, utc

APPOINTMENTS = "/api/v1/agenda/appointments"


@pytest.fixture(scope="module")
async def world(platform) -> World:
    return await make_world(platform, "book")


async def test_booking_takes_the_length_from_the_treatments_and_records_who(world: World):
    async with world.http() as http:
        booked = await http.post(
            APPOINTMENTS,
            json=world.booking(
                starts_at=at("10:00"), treatments=[str(world.cleaning), str(world.filling)]
            ),
            headers=world.tokens["receptionist"],
        )
        assert booked.status_code == 201, booked.text
        body = booked.json()
        assert body["status"] == "scheduled"
        assert body["ends_at"].startswith("2030-01-07T10:15:00")  # 09:00Z + 75 min
        assert body["treatments"] == [str(world.cleaning), str(world.filling)]
        assert body["booked_by"] == str(world.users["receptionist"])
        assert booked.headers["etag"] == '"1"'
        history = await http.get(
            f"{APPOINTMENTS}/{body['id']}/history", headers=world.tokens["receptionist"]
        )
    assert history.status_code == 200
    [entry] = history.json()
    assert entry["from_status"] is None and entry["to_status"] == "scheduled"
    assert entry["changed_by"] == str(world.users["receptionist"])


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"cabinet_id": "cab_b1"}, "belongs to another location"),
        ({"ends_at": at("08:00")}, "must be after starts_at"),
        ({"treatments": []}, "give ends_at"),
        ({"patient_id": str(uuid.uuid4())}, "patient"),
        ({"patient_id": str(uuid.uuid4())}, "does not exist"),
        ({"cabinet_id": str(uuid.uuid4())}, "does not exist"),
        ({"professional_id": str(uuid.uuid4())}, "does not exist"),
        ({"treatments": [str(uuid.uuid4())]}, "catalog items do not exist"),
        ({"starts_at": "2030-01-07T09:00:00"}, "timezone"),
        ({"ends_at": "2030-01-08T09:00:00+01:00"}, "at most 12 hours"),
    ],
)
async def test_bad_bookings_are_refused_with_a_reason(world: World, change, needle):
    if change.get("cabinet_id") == "cab_b1":
        change = {"cabinet_id": str(world.cab_b1)}
    async with world.http() as http:
        refused = await http.post(
            APPOINTMENTS,
            json=world.booking(**{"starts_at": at("18:00"), **change}),
            headers=world.tokens["receptionist"],
        )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert needle in refused.text


async def test_a_professional_cannot_be_booked_twice(world: World):
    async with world.http() as http:
        first = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at("11:30")),
            headers=world.tokens["receptionist"],
        )
        assert first.status_code == 201, first.text
        # Same dentist, other cabinet, overlapping by 15 minutes.
        clash = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at("11:45"), cabinet_id=world.cab_a2),
            headers=world.tokens["receptionist"],
        )
        # Back to back is fine: ranges are [start, end).
        after = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at("12:00"), cabinet_id=world.cab_a2),
            headers=world.tokens["receptionist"],
        )
    assert clash.status_code == 409, clash.text
    problem = clash.json()
    assert problem["type"].endswith("/double-booking")
    assert problem["clash"]["kind"] == "professional"
    assert problem["clash"]["appointment_id"] == first.json()["id"]
    assert "Dra. Dentist" in problem["detail"] and first.json()["id"] in problem["detail"]
    assert "11:30 to 12:00 (Europe/Madrid)" in problem["detail"]
    assert after.status_code == 201, after.text


async def test_a_cabinet_cannot_be_booked_twice(world: World):
    async with world.http() as http:
        first = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at("12:30"), professional_id=world.pros["hygienist"]),
            headers=world.tokens["receptionist"],
        )
        assert first.status_code == 201, first.text
        clash = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at("12:40")),
            headers=world.tokens["receptionist"],
        )
    assert clash.status_code == 409, clash.text
    assert clash.json()["clash"]["kind"] == "cabinet"
    assert clash.json()["clash"]["cabinet_id"] == str(world.cab_a1)
    assert "Gabinete A1" in clash.json()["detail"]


@pytest.mark.parametrize("freeing", ["cancelled", "no_show"])
async def test_cancelled_and_no_show_appointments_free_their_slot(world: World, freeing: str):
    start = {"cancelled": "16:00", "no_show": "17:00"}[freeing]
    async with world.http() as http:
        first = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at(start)),
            headers=world.tokens["receptionist"],
        )
        assert first.status_code == 201, first.text
        freed = await http.post(
            f"{APPOINTMENTS}/{first.json()['id']}/status",
            json={"status": freeing, "reason": "patient called"},
            headers=world.tokens["receptionist"],
        )
        assert freed.status_code == 200, freed.text
        again = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at(start)),
            headers=world.tokens["receptionist"],
        )
    assert again.status_code == 201, again.text


def _row(world: World, start: str, cabinet: uuid.UUID) -> dict:
    return {
        "patient_id": world.patient,
        "professional_id": world.pros["hygienist"],
        "cabinet_id": cabinet,
        "location_id": world.loc_a,
        "starts_at": utc(start),
        "ends_at": utc("13:30"),
    }


async def test_the_database_refuses_concurrent_overlapping_inserts(world: World):
    """Two transactions on two connections insert overlapping appointments at once: the
    second waits for the first's commit, then fails on the exclusion constraint."""
    platform = world.platform
    inserted = asyncio.Event()

    async def insert_one(row: dict, delay: float) -> uuid.UUID:
        async with platform.db.tenant(world.tenant.scope) as s:
            await asyncio.sleep(delay)
            new_id = await s.scalar(insert(appointments).values(row).returning(appointments.c.id))
            inserted.set()
            await asyncio.sleep(0.3)  # hold the row uncommitted while the other one inserts
            return new_id

    results = await asyncio.gather(
        insert_one(_row(world, "13:00", world.cab_a1), 0),
        insert_one(_row(world, "13:15", world.cab_a2), 0.1),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, uuid.UUID)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], IntegrityError)
    assert "ex_agenda_appointments_professional" in str(losers[0])


async def test_racing_bookings_over_http_give_one_booking_and_one_409(world: World):
    async with world.http() as http:

        async def book(cabinet: uuid.UUID):
            return await http.post(
                APPOINTMENTS,
                json=world.booking(
                    starts_at=at("19:00"),
                    professional_id=world.pros["dentist"],
                    cabinet_id=cabinet,
                ),
                headers=world.tokens["receptionist"],
            )

        results = await asyncio.gather(*(book(c) for c in (world.cab_a1, world.cab_a2)))
    assert sorted(r.status_code for r in results) == [201, 409], [r.text for r in results]
    winner = next(r for r in results if r.status_code == 201).json()
    loser = next(r for r in results if r.status_code == 409).json()
    assert loser["clash"]["appointment_id"] == winner["id"]
    async with world.platform.db.tenant(world.tenant.scope) as s:
        live = await s.scalar(
            select(appointments.c.id).where(
                appointments.c.professional_id == world.pros["dentist"],
                appointments.c.starts_at == utc("19:00"),
            )
        )
        history = (
            await s.execute(select(status_changes).where(status_changes.c.appointment_id == live))
        ).all()
    assert str(live) == winner["id"] and len(history) == 1


async def test_an_archived_patient_or_an_inactive_cabinet_cannot_be_booked(world: World):
    """The booking's lookups (one statement) still tell which part is not bookable."""
    async with world.platform.db.tenant(world.tenant.scope) as s:
        archived = await s.scalar(
            insert(patients)
            .values(given_name="Ana", family_name="Archivada", archived_at=utc("08:00"))
            .returning(patients.c.id)
        )
        closed = await s.scalar(
            insert(cabinets)
            .values(location_id=world.loc_a, name="Cerrado", active=False)
            .returning(cabinets.c.id)
        )
    async with world.http() as http:
        by_patient = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at("19:00"), patient_id=str(archived)),
            headers=world.tokens["receptionist"],
        )
        by_cabinet = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at("19:00"), cabinet_id=str(closed)),
            headers=world.tokens["receptionist"],
        )
    assert by_patient.status_code == 422 and "is archived" in by_patient.text
    assert by_cabinet.status_code == 422 and "'Cerrado' is not active" in by_cabinet.text
