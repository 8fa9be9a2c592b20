"""Free-slot search, and professionals with their working hours."""

from __future__ import annotations

import secrets
import uuid

import pytest
from sqlalchemy import insert

from dentalpin.modules.locations.models import cabinets, locations
from tests.modules.agenda.world import MONDAY, World, at, make_world
from tests.platform.identity import add_member, make_user

SLOTS = "/api/v1/agenda/slots"
PROFESSIONALS = "/api/v1/agenda/professionals"


@pytest.fixture(scope="module")
async def world(platform) -> World:
    return await make_world(platform, "slot")


async def _small_site(world: World, cabinets_count: int = 1) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A location of its own, so each test controls every appointment in it."""
    async with world.platform.db.tenant(world.tenant.scope) as s:
        site = await s.scalar(
            insert(locations)
            .values(name=f"Sur {secrets.token_hex(3)}", timezone="Atlantic/Canary")
            .returning(locations.c.id)
        )
        rooms = [
            await s.scalar(
                insert(cabinets).values(location_id=site, name=f"Box {n}").returning(cabinets.c.id)
            )
            for n in range(cabinets_count)
        ]
    return site, rooms


async def _professional(world: World, site: uuid.UUID, start: str, end: str) -> uuid.UUID:
    user = await make_user(world.platform)
    await add_member(world.platform, world.tenant, user, ["dentist"])
    async with world.http() as http:
        created = await http.post(
            PROFESSIONALS,
            json={
                "user_id": str(user.id),
                "display_name": "Dr. Slot",
                "color": "#aa3366",
                "hours": [
                    {"location_id": str(site), "weekday": 1, "starts_at": start, "ends_at": end}
                ],
            },
            headers=world.tokens["admin"],
        )
    assert created.status_code == 201, created.text
    return uuid.UUID(created.json()["id"])


async def _slots(world: World, site: uuid.UUID, **params) -> list[tuple[str, str, str]]:
    async with world.http() as http:
        found = await http.get(
            SLOTS,
            params={"location_id": str(site), "date_from": MONDAY, "date_to": MONDAY, **params},
            headers=world.tokens["receptionist"],
        )
    assert found.status_code == 200, found.text
    return [
        (s["starts_at"][11:16], s["professional_id"], s["cabinet_id"])
        for s in found.json()["items"]
    ]


async def test_slots_follow_working_hours_appointments_and_cabinets(world: World):
    # Canary Islands: UTC+0 in January, so local times read as UTC.
    site, [room] = await _small_site(world)
    pro = await _professional(world, site, "09:00", "10:30")
    free = await _slots(world, site, item_id=str(world.cleaning))
    assert [s[0] for s in free] == ["09:00", "09:15", "09:30", "09:45", "10:00"]
    assert {(s[1], s[2]) for s in free} == {(str(pro), str(room))}
    async with world.http() as http:
        booked = await http.post(
            "/api/v1/agenda/appointments",
            json=world.booking(
                location_id=site,
                cabinet_id=room,
                professional_id=pro,
                starts_at=f"{MONDAY}T09:30:00+00:00",
            ),
            headers=world.tokens["receptionist"],
        )
        assert booked.status_code == 201, booked.text
    free = await _slots(world, site, item_id=str(world.cleaning))
    assert [s[0] for s in free] == ["09:00", "10:00"]
    # A 45-minute filling fits nowhere any more; 30 minutes every half hour fits twice.
    assert await _slots(world, site, item_id=str(world.filling)) == []
    assert [s[0] for s in await _slots(world, site, duration_minutes=30, step_minutes=30)] == [
        "09:00",
        "10:00",
    ]


async def test_a_busy_cabinet_blocks_a_free_professional(world: World):
    site, [room] = await _small_site(world)
    first = await _professional(world, site, "09:00", "10:00")
    second = await _professional(world, site, "09:00", "10:00")
    async with world.http() as http:
        booked = await http.post(
            "/api/v1/agenda/appointments",
            json=world.booking(
                location_id=site,
                cabinet_id=room,
                professional_id=first,
                starts_at=f"{MONDAY}T09:00:00+00:00",
                ends_at=f"{MONDAY}T09:30:00+00:00",
            ),
            headers=world.tokens["receptionist"],
        )
        assert booked.status_code == 201, booked.text
    free = await _slots(world, site, duration_minutes=30, step_minutes=30)
    # The second professional is free at 09:00, but the only cabinet is not.
    assert sorted((s[0], s[1]) for s in free) == sorted(
        [("09:30", str(first)), ("09:30", str(second))]
    )
    only = await _slots(
        world, site, duration_minutes=30, step_minutes=30, professional_id=str(second)
    )
    assert [s[0] for s in only] == ["09:30"]


async def test_slots_respect_the_location_time_zone(world: World):
    # Madrid (UTC+1 in January): 09:00-14:00 local opens at 08:00 UTC.
    free = await _slots(world, world.loc_a, duration_minutes=60, step_minutes=60, limit=3)
    assert [s[0] for s in free] == ["08:00", "08:00", "09:00"]


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"duration_minutes": 30, "date_to": "2030-03-01"}, 422, "at most 31 days"),
        ({}, 422, "item_id"),
        ({"item_id": str(uuid.uuid4())}, 422, "do not exist"),
        ({"duration_minutes": 30, "location_id": str(uuid.uuid4())}, 404, "no location"),
    ],
)
async def test_bad_slot_searches_teach(world: World, params, status, needle):
    query = {"location_id": str(world.loc_a), "date_from": MONDAY, "date_to": MONDAY, **params}
    async with world.http() as http:
        response = await http.get(SLOTS, params=query, headers=world.tokens["receptionist"])
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]


async def test_professionals_are_versioned_and_their_hours_replaced(world: World):
    headers = world.tokens["admin"]
    async with world.http() as http:
        duplicate = await http.post(
            PROFESSIONALS,
            json={"user_id": str(world.users["dentist"]), "display_name": "Again"},
            headers=headers,
        )
        assert duplicate.status_code == 409
        assert str(world.pros["dentist"]) in duplicate.json()["detail"]
        url = f"{PROFESSIONALS}/{world.pros['hygienist']}"
        read = await http.get(url, headers=world.tokens["receptionist"])
        assert read.status_code == 200 and read.headers["etag"] == '"1"'
        assert {h["location_id"] for h in read.json()["hours"]} == {
            str(world.loc_a),
            str(world.loc_b),
        }
        renamed = await http.patch(
            url, json={"color": "#112233"}, headers={**headers, "if-match": '"1"'}
        )
        assert renamed.status_code == 200 and renamed.json()["color"] == "#112233"
        stale = await http.put(
            f"{url}/hours", json={"hours": []}, headers={**headers, "if-match": '"1"'}
        )
        assert stale.status_code == 412
        bad = await http.put(
            f"{url}/hours",
            json={
                "hours": [
                    {
                        "location_id": str(world.loc_b),
                        "weekday": 8,
                        "starts_at": "09:00",
                        "ends_at": "10:00",
                    }
                ]
            },
            headers={**headers, "if-match": '"2"'},
        )
        assert bad.status_code == 422
        backwards = await http.put(
            f"{url}/hours",
            json={
                "hours": [
                    {
                        "location_id": str(world.loc_b),
                        "weekday": 2,
                        "starts_at": "14:00",
                        "ends_at": "10:00",
                    }
                ]
            },
            headers={**headers, "if-match": '"2"'},
        )
        assert backwards.status_code == 422 and "split shift" in backwards.text
        replaced = await http.put(
            f"{url}/hours",
            json={
                "hours": [
                    {
                        "location_id": str(world.loc_b),
                        "weekday": 2,
                        "starts_at": "10:00",
                        "ends_at": "14:00",
                    }
                ]
            },
            headers={**headers, "if-match": '"2"'},
        )
        assert replaced.status_code == 200, replaced.text
        assert replaced.headers["etag"] == '"3"'
        assert replaced.json()["hours"] == [
            {
                "location_id": str(world.loc_b),
                "weekday": 2,
                "starts_at": "10:00:00",
                "ends_at": "14:00:00",
            }
        ]
        at_a = await http.get(
            PROFESSIONALS, params={"location_id": str(world.loc_a)}, headers=headers
        )
        assert [p["id"] for p in at_a.json()["items"]] == [str(world.pros["dentist"])]
        retired = await http.patch(
            url, json={"active": False}, headers={**headers, "if-match": '"3"'}
        )
        assert retired.status_code == 200
        refused = await http.post(
            "/api/v1/agenda/appointments",
            json=world.booking(starts_at=at("12:00"), professional_id=world.pros["hygienist"]),
            headers=world.tokens["receptionist"],
        )
        assert refused.status_code == 422 and "no longer active" in refused.text
        active = await http.get(PROFESSIONALS, params={"active": "true"}, headers=headers)
    assert str(world.pros["hygienist"]) not in {p["id"] for p in active.json()["items"]}


async def test_only_members_of_the_clinic_become_professionals(world: World):
    """A professional is a member: not any user id, and never another clinic's member."""
    from dentalpin.tenants import create_tenant
    from tests.conftest import unique_slug

    elsewhere = await create_tenant(world.platform, unique_slug("agenda-b"), modules=["agenda"])
    theirs = await make_user(world.platform, name="Dra. Ajena")
    await add_member(world.platform, elsewhere, theirs, ["dentist"])
    outsider = await make_user(world.platform, name="Nadie")
    ours = await make_user(world.platform, name="Dra. Nueva")
    await add_member(world.platform, world.tenant, ours, ["hygienist"])
    async with world.http() as http:
        for user_id in (theirs.id, outsider.id, uuid.uuid4()):
            refused = await http.post(
                PROFESSIONALS,
                json={"user_id": str(user_id), "display_name": "Someone"},
                headers=world.tokens["admin"],
            )
            assert refused.status_code == 422, refused.text
            assert "not a member of this clinic" in refused.json()["detail"]
            assert "Ajena" not in refused.text  # nothing of the other clinic's member shows
        created = await http.post(
            PROFESSIONALS, json={"user_id": str(ours.id)}, headers=world.tokens["admin"]
        )
        assert created.status_code == 201, created.text
        assert created.json()["display_name"] == "Dra. Nueva"  # the member's own name
