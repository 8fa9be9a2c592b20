"""Who sees and changes what: clinical notes, location-limited members, role permissions,
and another clinic (tenant isolation)."""

from __future__ import annotations

import pytest

from tests.modules.agenda.world import World, at, make_world
from tests.platform.identity import add_member, bearer, host_of, make_user, session

APPOINTMENTS = "/api/v1/agenda/appointments"


@pytest.fixture(scope="module")
async def world(platform) -> World:
    return await make_world(platform, "acc")


@pytest.fixture(scope="module")
async def other(platform) -> World:
    return await make_world(platform, "acc-b")


async def _book(http, world: World, role: str = "dentist", **extra) -> dict:
    booked = await http.post(APPOINTMENTS, json=world.booking(**extra), headers=world.tokens[role])
    assert booked.status_code == 201, booked.text
    return booked.json()


async def test_clinical_notes_are_for_clinical_roles_only(world: World):
    async with world.http() as http:
        booked = await _book(http, world, starts_at=at("09:00"), notes="Alergia a la penicilina")
        url = f"{APPOINTMENTS}/{booked['id']}"
        assert booked["notes"] == "Alergia a la penicilina"
        for role in ("dentist", "hygienist", "admin"):
            seen = await http.get(url, headers=world.tokens[role])
            assert seen.json()["notes"] == "Alergia a la penicilina", role
        front = await http.get(url, headers=world.tokens["receptionist"])
        assert front.status_code == 200 and "notes" not in front.json()
        listed = await http.get(APPOINTMENTS, headers=world.tokens["receptionist"])
        assert all("notes" not in a for a in listed.json()["items"])
        assert "penicilina" not in listed.text
        writes = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at("10:00"), notes="x"),
            headers=world.tokens["receptionist"],
        )
        assert writes.status_code == 403, writes.text
        assert "agenda.appointment.notes" in writes.json()["detail"]
        edits = await http.patch(
            url,
            json={"notes": "changed"},
            headers={**world.tokens["receptionist"], "if-match": '"1"'},
        )
        assert edits.status_code == 403
        # A receptionist's move leaves the notes as they were.
        moved = await http.patch(
            url,
            json={"starts_at": at("09:30")},
            headers={**world.tokens["receptionist"], "if-match": '"1"'},
        )
        assert moved.status_code == 200, moved.text
        seen = await http.get(url, headers=world.tokens["dentist"])
    assert seen.json()["notes"] == "Alergia a la penicilina"


@pytest.mark.parametrize(
    ("role", "method", "path", "allowed"),
    [
        ("accountant", "GET", APPOINTMENTS, False),
        ("accountant", "GET", "/api/v1/agenda/professionals", False),
        ("receptionist", "GET", APPOINTMENTS, True),
        ("receptionist", "POST", "/api/v1/agenda/professionals", False),
        ("dentist", "POST", "/api/v1/agenda/professionals", False),
        ("receptionist", "GET", "/api/v1/agenda/professionals", True),
    ],
)
async def test_role_permissions(world: World, role, method, path, allowed):
    async with world.http() as http:
        response = await http.request(method, path, json={}, headers=world.tokens[role])
    if allowed:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 403, response.text


async def test_a_member_limited_to_one_location_sees_and_books_only_there(world: World):
    limited = world.tokens["receptionist_b"]
    async with world.http() as http:
        in_a = await _book(http, world, starts_at=at("11:00"))
        in_b = await _book(
            http,
            world,
            role="receptionist_b",
            starts_at=at("16:00"),
            location_id=world.loc_b,
            cabinet_id=world.cab_b1,
            professional_id=world.pros["hygienist"],
        )
        listed = await http.get(APPOINTMENTS, headers=limited)
        ids = {a["id"] for a in listed.json()["items"]}
        assert in_b["id"] in ids and in_a["id"] not in ids
        assert listed.json()["total"] == len(ids)
        filtered = await http.get(
            APPOINTMENTS, params={"location_id": str(world.loc_a)}, headers=limited
        )
        assert filtered.json()["total"] == 0
        for path in (f"{APPOINTMENTS}/{in_a['id']}", f"{APPOINTMENTS}/{in_a['id']}/history"):
            assert (await http.get(path, headers=limited)).status_code == 404
        status = await http.post(
            f"{APPOINTMENTS}/{in_a['id']}/status", json={"status": "cancelled"}, headers=limited
        )
        assert status.status_code == 404
        move = await http.patch(
            f"{APPOINTMENTS}/{in_a['id']}",
            json={"starts_at": at("12:00")},
            headers={**limited, "if-match": '"1"'},
        )
        assert move.status_code == 404
        refused = await http.post(
            APPOINTMENTS, json=world.booking(starts_at=at("12:00")), headers=limited
        )
        assert refused.status_code == 403, refused.text
        assert "locations your membership covers" in refused.json()["detail"]
        # Moving its own appointment into location A is refused too.
        escape = await http.patch(
            f"{APPOINTMENTS}/{in_b['id']}",
            json={
                "location_id": str(world.loc_a),
                "cabinet_id": str(world.cab_a2),
                "starts_at": at("12:00"),
            },
            headers={**limited, "if-match": '"1"'},
        )
        assert escape.status_code == 403, escape.text
        slots = await http.get(
            "/api/v1/agenda/slots",
            params={
                "location_id": str(world.loc_a),
                "date_from": "2030-01-07",
                "date_to": "2030-01-07",
                "duration_minutes": 30,
            },
            headers=limited,
        )
        assert slots.status_code == 404
        unchanged = await http.get(f"{APPOINTMENTS}/{in_a['id']}", headers=world.tokens["dentist"])
    assert unchanged.json()["status"] == "scheduled" and unchanged.json()["version"] == 1


async def test_another_clinic_cannot_read_or_change_our_appointments(
    platform, world: World, other: World
):
    async with world.http() as http:
        ours = await _book(http, world, starts_at=at("13:00"), notes="secreto-clinico")
    url = f"{APPOINTMENTS}/{ours['id']}"
    their_admin = other.tokens["admin"]
    async with other.http() as http:
        # B's admin on B's host: A's ids do not exist there.
        assert (await http.get(url, headers=their_admin)).status_code == 404
        assert (await http.get(f"{url}/history", headers=their_admin)).status_code == 404
        status = await http.post(f"{url}/status", json={"status": "cancelled"}, headers=their_admin)
        assert status.status_code == 404
        move = await http.patch(
            url, json={"starts_at": at("14:00")}, headers={**their_admin, "if-match": '"1"'}
        )
        assert move.status_code == 404
        listed = await http.get(APPOINTMENTS, params={"limit": 200}, headers=their_admin)
        assert ours["id"] not in listed.text and "secreto-clinico" not in listed.text
        # Booking in B with A's patient, cabinet or location ids finds nothing to book.
        foreign = await http.post(APPOINTMENTS, json=world.booking(), headers=their_admin)
        assert foreign.status_code == 422
    # A's admin token on B's host is refused outright.
    async with other.http() as http:
        crossed = await http.get(
            url, headers={**world.tokens["admin"], "host": host_of(other.tenant)}
        )
        assert crossed.status_code == 403
    async with world.http() as http:
        still = await http.get(url, headers=world.tokens["dentist"])
    assert still.json()["status"] == "scheduled" and still.json()["version"] == 1


async def test_a_member_without_roles_here_gets_nothing(platform, world: World, other: World):
    outsider = await make_user(platform)
    await add_member(platform, other.tenant, outsider, ["admin"])
    token = bearer(await session(platform, outsider, other.tenant))
    async with world.http() as http:
        response = await http.get(APPOINTMENTS, headers=token)
    assert response.status_code == 403
