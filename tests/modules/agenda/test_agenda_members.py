"""Professionals follow memberships: a member who leaves a clinic (the platform publishes
`platform.member_removed` there) is no longer bookable in it, and only in it."""

from __future__ import annotations

from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.modules.agenda.world import make_world
from tests.platform.identity import add_member, bearer, client, host_of, make_user, session

PROFESSIONALS = "/api/v1/agenda/professionals"


async def test_a_member_who_leaves_is_no_longer_bookable_there_only(platform):
    world = await make_world(platform, "leave")
    other = await create_tenant(platform, unique_slug("stay"), modules=["agenda"])
    other_admin = await make_user(platform)
    await add_member(platform, other, other_admin, ["admin"])
    other_token = bearer(await session(platform, other_admin, other))
    both = await make_user(platform, name="Dra. Doble")
    await add_member(platform, world.tenant, both, ["dentist"])
    await add_member(platform, other, both, ["dentist"])
    async with world.http() as http, client(platform, host_of(other)) as elsewhere:
        here = await http.post(
            PROFESSIONALS,
            json={
                "user_id": str(both.id),
                "hours": [
                    {
                        "location_id": str(world.loc_a),
                        "weekday": 1,
                        "starts_at": "09:00",
                        "ends_at": "14:00",
                    }
                ],
            },
            headers=world.tokens["admin"],
        )
        there = await elsewhere.post(
            PROFESSIONALS, json={"user_id": str(both.id)}, headers=other_token
        )
        assert here.status_code == there.status_code == 201, (here.text, there.text)

        left = await http.delete(f"/api/v1/members/{both.id}", headers=world.tokens["admin"])
        assert left.status_code == 204, left.text
        await platform.nudge.drain()  # the relay delivers platform.member_removed

        mine = (
            await http.get(f"{PROFESSIONALS}/{here.json()['id']}", headers=world.tokens["admin"])
        ).json()
        assert mine["active"] is False and mine["version"] == 2
        theirs = (
            await elsewhere.get(f"{PROFESSIONALS}/{there.json()['id']}", headers=other_token)
        ).json()
        assert theirs["active"] is True and theirs["version"] == 1  # another clinic's matter
        refused = await http.post(
            "/api/v1/agenda/appointments",
            json=world.booking(professional_id=here.json()["id"]),
            headers=world.tokens["receptionist"],
        )
        assert refused.status_code == 422 and "no longer active" in refused.json()["detail"]


async def test_modules_cannot_publish_the_platforms_events(platform):
    import uuid

    import pytest

    from dentalpin.platform import MemberRemoved, publish

    tenant = await create_tenant(platform, unique_slug("forge"), modules=["agenda"])
    async with platform.db.tenant(tenant.scope) as s:
        with pytest.raises(TypeError, match="platform's own event"):
            await publish(s, MemberRemoved(user_id=uuid.uuid4()))
