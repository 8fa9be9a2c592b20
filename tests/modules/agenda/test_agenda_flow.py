"""The status flow with its history, moving appointments (If-Match), and the list."""

from __future__ import annotations

import pytest

from tests.modules.agenda.world import World, at, make_world

APPOINTMENTS = "/api/v1/agenda/appointments"


@pytest.fixture(scope="module")
async def world(platform) -> World:
    return await make_world(platform, "flow")


async def _book(http, world: World, start: str, **extra) -> dict:
    booked = await http.post(
        APPOINTMENTS,
        json=world.booking(starts_at=at(start), **extra),
        headers=world.tokens["receptionist"],
    )
    assert booked.status_code == 201, booked.text
    return booked.json()


async def _to(http, world: World, appointment: dict, status: str, role: str = "receptionist"):
    return await http.post(
        f"{APPOINTMENTS}/{appointment['id']}/status",
        json={"status": status},
        headers=world.tokens[role],
    )


async def test_the_whole_flow_is_recorded_step_by_step(world: World):
    async with world.http() as http:
        appointment = await _book(http, world, "09:00")
        steps = [
            ("confirmed", "receptionist"),
            ("checked_in", "receptionist"),
            ("in_treatment", "dentist"),
            ("completed", "dentist"),
        ]
        for status, role in steps:
            moved = await _to(http, world, appointment, status, role)
            assert moved.status_code == 200, moved.text
            assert moved.json()["status"] == status
        assert moved.json()["version"] == 5
        history = await http.get(
            f"{APPOINTMENTS}/{appointment['id']}/history", headers=world.tokens["dentist"]
        )
    changes = [(h["from_status"], h["to_status"], h["changed_by"]) for h in history.json()]
    assert changes == [
        (None, "scheduled", str(world.users["receptionist"])),
        ("scheduled", "confirmed", str(world.users["receptionist"])),
        ("confirmed", "checked_in", str(world.users["receptionist"])),
        ("checked_in", "in_treatment", str(world.users["dentist"])),
        ("in_treatment", "completed", str(world.users["dentist"])),
    ]
    assert all(h["changed_at"] for h in history.json())


@pytest.mark.parametrize(
    ("start", "path", "refused"),
    [
        ("10:00", [], "completed"),
        ("10:30", [], "in_treatment"),
        ("11:00", ["confirmed"], "scheduled"),
        ("11:30", ["cancelled"], "confirmed"),
        ("12:00", ["no_show"], "checked_in"),
        ("12:30", ["checked_in", "in_treatment", "completed"], "cancelled"),
        ("13:00", ["checked_in"], "no_show"),
    ],
)
async def test_invalid_transitions_are_409_and_change_nothing(world: World, start, path, refused):
    async with world.http() as http:
        appointment = await _book(http, world, start, cabinet_id=world.cab_a2)
        for status in path:
            assert (await _to(http, world, appointment, status)).status_code == 200
        response = await _to(http, world, appointment, refused)
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert f"cannot become {refused}" in response.json()["detail"]
        history = await http.get(
            f"{APPOINTMENTS}/{appointment['id']}/history", headers=world.tokens["dentist"]
        )
        current = await http.get(
            f"{APPOINTMENTS}/{appointment['id']}", headers=world.tokens["dentist"]
        )
    assert len(history.json()) == 1 + len(path)
    assert current.json()["status"] == (path[-1] if path else "scheduled")


async def test_moving_needs_if_match_and_refuses_stale_versions(world: World):
    async with world.http() as http:
        appointment = await _book(http, world, "16:00")
        url = f"{APPOINTMENTS}/{appointment['id']}"
        change = {"starts_at": at("17:00")}
        missing = await http.patch(url, json=change, headers=world.tokens["receptionist"])
        assert missing.status_code == 428, missing.text
        stale = await http.patch(
            url, json=change, headers={**world.tokens["receptionist"], "if-match": '"7"'}
        )
        assert stale.status_code == 412, stale.text
        moved = await http.patch(
            url, json=change, headers={**world.tokens["receptionist"], "if-match": '"1"'}
        )
        assert moved.status_code == 200, moved.text
        assert moved.headers["etag"] == '"2"'
        body = moved.json()
        # A new start without a new end keeps the length (30 minutes of cleaning).
        assert body["starts_at"].startswith("2030-01-07T16:00:00")
        assert body["ends_at"].startswith("2030-01-07T16:30:00")
        again = await http.patch(
            url, json=change, headers={**world.tokens["receptionist"], "if-match": '"1"'}
        )
        assert again.status_code == 412


async def test_moving_onto_a_taken_slot_is_409_and_keeps_the_old_time(world: World):
    async with world.http() as http:
        taken = await _book(http, world, "18:00")
        mine = await _book(http, world, "18:30")
        clash = await http.patch(
            f"{APPOINTMENTS}/{mine['id']}",
            json={"starts_at": at("18:15")},
            headers={**world.tokens["receptionist"], "if-match": '"1"'},
        )
        assert clash.status_code == 409, clash.text
        assert clash.json()["clash"]["appointment_id"] == taken["id"]
        # Moving within its own slot is no clash with itself.
        itself = await http.patch(
            f"{APPOINTMENTS}/{mine['id']}",
            json={"starts_at": at("18:40")},
            headers={**world.tokens["receptionist"], "if-match": '"1"'},
        )
        assert itself.status_code == 200, itself.text
        # Another cabinet and professional at the taken time is fine.
        elsewhere = await http.patch(
            f"{APPOINTMENTS}/{mine['id']}",
            json={
                "starts_at": at("18:00"),
                "cabinet_id": str(world.cab_a2),
                "professional_id": str(world.pros["hygienist"]),
            },
            headers={**world.tokens["receptionist"], "if-match": '"2"'},
        )
    assert elsewhere.status_code == 200, elsewhere.text
    assert elsewhere.json()["professional_id"] == str(world.pros["hygienist"])


async def test_started_appointments_cannot_move(world: World):
    async with world.http() as http:
        appointment = await _book(http, world, "19:30")
        await _to(http, world, appointment, "checked_in")
        refused = await http.patch(
            f"{APPOINTMENTS}/{appointment['id']}",
            json={"starts_at": at("19:00")},
            headers={**world.tokens["receptionist"], "if-match": '"2"'},
        )
    assert refused.status_code == 409
    assert "only scheduled or confirmed" in refused.json()["detail"]


async def test_the_list_pages_filters_and_sorts(world: World):
    """Its own three appointments, early in the day where no other test books."""
    window = {"starts_from": at("07:00"), "starts_before": at("08:30")}
    async with world.http() as http:
        headers = world.tokens["receptionist"]
        early = [await _book(http, world, start) for start in ("07:00", "07:30", "08:00")]
        assert (await _to(http, world, early[1], "confirmed")).status_code == 200
        assert (await _to(http, world, early[2], "checked_in")).status_code == 200
        first = await http.get(
            APPOINTMENTS, params={**window, "limit": 2, "sort": "-starts_at"}, headers=headers
        )
        assert first.status_code == 200, first.text
        page = first.json()
        assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
        assert [a["id"] for a in page["items"]] == [early[2]["id"], early[1]["id"]]
        rest = await http.get(
            APPOINTMENTS,
            params={**window, "limit": 2, "offset": 2, "sort": "-starts_at"},
            headers=headers,
        )
        assert [a["id"] for a in rest.json()["items"]] == [early[0]["id"]]
        everything = await http.get(APPOINTMENTS, params={"limit": 200}, headers=headers)
        starts = [a["starts_at"] for a in everything.json()["items"]]
        assert starts == sorted(starts) and everything.json()["total"] == len(starts)
        chosen = await http.get(
            APPOINTMENTS,
            params={**window, "status": ["confirmed", "checked_in"]},
            headers=headers,
        )
        assert sorted(a["id"] for a in chosen.json()["items"]) == sorted(
            [early[1]["id"], early[2]["id"]]
        )
        mine = await http.get(
            APPOINTMENTS,
            params={**window, "professional_id": str(world.pros["hygienist"])},
            headers=headers,
        )
        assert mine.json()["total"] == 0
        bad = await http.get(APPOINTMENTS, params={"sort": "patient_name"}, headers=headers)
        assert bad.status_code == 422 and "Sort by one of" in bad.json()["detail"]
