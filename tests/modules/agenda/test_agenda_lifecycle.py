"""Uninstall and restore: the archive brings back appointments, their treatments and
history, and the restored schema still refuses double booking."""

from __future__ import annotations

from tests.modules.agenda.world import at, make_world
from tests.platform.identity import run_job

APPOINTMENTS = "/api/v1/agenda/appointments"


async def test_uninstall_and_restore_keep_the_agenda_and_its_rules(platform):
    world = await make_world(platform, "life")
    async with world.http() as http:
        booked = await http.post(
            APPOINTMENTS, json=world.booking(starts_at=at("09:00")), headers=world.tokens["dentist"]
        )
        assert booked.status_code == 201, booked.text
        url = f"{APPOINTMENTS}/{booked.json()['id']}"
        assert (
            await http.post(
                f"{url}/status", json={"status": "confirmed"}, headers=world.tokens["dentist"]
            )
        ).status_code == 200
        before = (await http.get(url, headers=world.tokens["dentist"])).json()
        history = (await http.get(f"{url}/history", headers=world.tokens["dentist"])).json()

    job = await run_job(
        platform, "lifecycle.uninstall", world.tenant, module="agenda", cascade=False
    )
    assert job.state == "succeeded", job.error
    assert job.result["tables"]["agenda"]["agenda_appointments"] == 1
    async with world.http() as http:
        gone = await http.get(url, headers=world.tokens["dentist"])
        assert gone.status_code == 404

    job = await run_job(platform, "lifecycle.restore", world.tenant, module="agenda")
    assert job.state == "succeeded", job.error
    async with world.http() as http:
        assert (await http.get(url, headers=world.tokens["dentist"])).json() == before
        assert (await http.get(f"{url}/history", headers=world.tokens["dentist"])).json() == history
        clash = await http.post(
            APPOINTMENTS,
            json=world.booking(starts_at=at("09:15"), cabinet_id=world.cab_a2),
            headers=world.tokens["dentist"],
        )
    assert clash.status_code == 409, clash.text
    assert clash.json()["clash"]["appointment_id"] == before["id"]
