"""locations: the default site at install, CRUD of sites and cabinets with optimistic
concurrency, time zones checked, location-limited members, roles, tenant isolation and
the uninstall round trip."""

from __future__ import annotations

from sqlalchemy import func, select

from dentalpin.modules.locations.models import cabinets, locations
from tests.modules.members import if_match, open_clinic, problem, run_job

API = "/api/v1/locations"


async def test_a_new_clinic_gets_one_default_location_named_after_it(platform):
    clinic = await open_clinic(platform, ["locations"], "loc-seed")
    async with clinic.http() as http:
        body = (await http.get(f"{API}/locations", headers=clinic.as_("receptionist"))).json()
    assert body["total"] == 1
    (site,) = body["items"]
    assert site["name"] == clinic.tenant.name
    assert site["is_default"] is True
    assert site["timezone"] == "Europe/Madrid"
    assert site["version"] == 1


async def test_locations_and_cabinets_crud_with_if_match(platform):
    clinic = await open_clinic(platform, ["locations"], "loc-crud")
    admin = clinic.as_("admin")
    async with clinic.http() as http:
        created = await http.post(
            f"{API}/locations",
            json={"name": "Las Palmas", "timezone": "Atlantic/Canary", "city": "Las Palmas"},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        site = created.json()
        assert site["is_default"] is False and created.headers["ETag"] == '"1"'

        bad_zone = await http.post(
            f"{API}/locations", json={"name": "Luna", "timezone": "Moon/Base"}, headers=admin
        )
        assert "IANA time zone" in str(problem(bad_zone, 422)["errors"])
        twice = await http.post(f"{API}/locations", json={"name": "las palmas"}, headers=admin)
        assert "already exists" in problem(twice, 409)["detail"]

        url = f"{API}/locations/{site['id']}"
        assert (
            "If-Match"
            in problem(await http.patch(url, json={"phone": "928"}, headers=admin), 428)["detail"]
        )
        changed = await http.patch(
            url, json={"phone": "+34 928 000 000"}, headers={**admin, **if_match(created)}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["version"] == 2 and changed.headers["ETag"] == '"2"'
        stale = await http.patch(url, json={"phone": "1"}, headers={**admin, **if_match(created)})
        assert "changed since you read it" in problem(stale, 412)["detail"]
        cleared = await http.patch(url, json={"name": None}, headers={**admin, **if_match(changed)})
        problem(cleared, 422)

        # The new site becomes the default; the old default stops being it.
        default = await http.patch(
            url, json={"is_default": True}, headers={**admin, **if_match(changed)}
        )
        assert default.json()["is_default"] is True
        listed = (await http.get(f"{API}/locations", headers=admin)).json()["items"]
        assert [s["name"] for s in listed if s["is_default"]] == ["Las Palmas"]
        refused = await http.post(f"{url}/archive", headers={**admin, **if_match(default)})
        assert "default location cannot be archived" in problem(refused, 409)["detail"]

        old = next(s for s in listed if s["name"] != "Las Palmas")
        archived = await http.post(
            f"{API}/locations/{old['id']}/archive",
            headers={**admin, "If-Match": f'"{old["version"]}"'},
        )
        assert archived.status_code == 200 and archived.json()["archived_at"]
        live = (await http.get(f"{API}/locations", headers=admin)).json()
        assert [s["name"] for s in live["items"]] == ["Las Palmas"]
        everything = (
            await http.get(f"{API}/locations?include_archived=true", headers=admin)
        ).json()
        assert everything["total"] == 2

        cabinet = await http.post(f"{url}/cabinets", json={"name": "Gabinete 1"}, headers=admin)
        assert cabinet.status_code == 201, cabinet.text
        again = await http.post(f"{url}/cabinets", json={"name": "GABINETE 1"}, headers=admin)
        problem(again, 409)
        off = await http.patch(
            f"{API}/cabinets/{cabinet.json()['id']}",
            json={"active": False},
            headers={**admin, **if_match(cabinet)},
        )
        assert off.json()["active"] is False
        assert (await http.get(f"{url}/cabinets", headers=admin)).json()["total"] == 0
        all_cabinets = await http.get(f"{url}/cabinets?include_inactive=true", headers=admin)
        assert [c["name"] for c in all_cabinets.json()["items"]] == ["Gabinete 1"]
        closed = await http.post(
            f"{API}/locations/{old['id']}/cabinets", json={"name": "X"}, headers=admin
        )
        assert "archived" in problem(closed, 409)["detail"]


async def test_lists_page_and_sort_by_whitelisted_fields(platform):
    clinic = await open_clinic(platform, ["locations"], "loc-page")
    admin = clinic.as_("admin")
    async with clinic.http() as http:
        for name in ("Bilbao", "Albacete", "Cádiz"):
            assert (
                await http.post(f"{API}/locations", json={"name": name}, headers=admin)
            ).status_code == 201
        page = (
            await http.get(f"{API}/locations?sort=-name&limit=2&offset=1", headers=admin)
        ).json()
        assert page["total"] == 4 and page["limit"] == 2 and page["offset"] == 1
        names = sorted([clinic.tenant.name, "Bilbao", "Albacete", "Cádiz"], reverse=True)
        assert [s["name"] for s in page["items"]] == names[1:3]
        bad = await http.get(f"{API}/locations?sort=tax_id", headers=admin)
        assert "Sort by one of" in problem(bad, 422)["detail"]
        found = (await http.get(f"{API}/locations?q=bilb", headers=admin)).json()
        assert [s["name"] for s in found["items"]] == ["Bilbao"]


async def test_roles_read_but_only_admins_write(platform):
    clinic = await open_clinic(platform, ["locations"], "loc-roles")
    async with clinic.http() as http:
        for role in ("receptionist", "accountant", "dentist"):
            assert (await http.get(f"{API}/locations", headers=clinic.as_(role))).status_code == 200
            refused = await http.post(
                f"{API}/locations", json={"name": role}, headers=clinic.as_(role)
            )
            assert "locations.location.write" in problem(refused, 403)["detail"]
        assert (await http.get(f"{API}/locations")).status_code == 401


async def test_a_member_limited_to_one_location_sees_and_changes_only_that_one(platform):
    clinic = await open_clinic(platform, ["locations"], "loc-limit")
    async with clinic.http() as http:
        north = (
            await http.post(f"{API}/locations", json={"name": "Norte"}, headers=clinic.as_("admin"))
        ).json()
        await clinic.member("north_admin", ["admin"], (north["id"],))
        limited = clinic.as_("north_admin")
        seen = (await http.get(f"{API}/locations", headers=limited)).json()
        assert [s["name"] for s in seen["items"]] == ["Norte"]
        default = next(
            s
            for s in (await http.get(f"{API}/locations", headers=clinic.as_("admin"))).json()[
                "items"
            ]
            if s["is_default"]
        )
        problem(await http.get(f"{API}/locations/{default['id']}", headers=limited), 404)
        problem(
            await http.patch(
                f"{API}/locations/{default['id']}",
                json={"phone": "1"},
                headers={**limited, "If-Match": '"1"'},
            ),
            404,
        )
        problem(
            await http.post(
                f"{API}/locations/{default['id']}/cabinets", json={"name": "Z"}, headers=limited
            ),
            404,
        )
        problem(await http.post(f"{API}/locations", json={"name": "Sur"}, headers=limited), 403)
        ok = await http.post(
            f"{API}/locations/{north['id']}/cabinets", json={"name": "N1"}, headers=limited
        )
        assert ok.status_code == 201


async def test_another_clinic_cannot_read_or_change_our_locations(platform):
    ours = await open_clinic(platform, ["locations"], "loc-iso-a")
    theirs = await open_clinic(platform, ["locations"], "loc-iso-b")
    async with ours.http() as http:
        site = (await http.get(f"{API}/locations", headers=ours.as_("admin"))).json()["items"][0]
        cabinet = (
            await http.post(
                f"{API}/locations/{site['id']}/cabinets",
                json={"name": "G1"},
                headers=ours.as_("admin"),
            )
        ).json()
    async with theirs.http() as http:
        admin = theirs.as_("admin")
        problem(await http.get(f"{API}/locations/{site['id']}", headers=admin), 404)
        problem(
            await http.patch(
                f"{API}/locations/{site['id']}",
                json={"name": "Mine"},
                headers={**admin, "If-Match": '"1"'},
            ),
            404,
        )
        problem(
            await http.post(
                f"{API}/locations/{site['id']}/archive", headers={**admin, "If-Match": '"1"'}
            ),
            404,
        )
        problem(await http.get(f"{API}/cabinets/{cabinet['id']}", headers=admin), 404)
        problem(
            await http.patch(
                f"{API}/cabinets/{cabinet['id']}",
                json={"name": "X"},
                headers={**admin, "If-Match": '"1"'},
            ),
            404,
        )
    async with ours.http() as http:
        again = (await http.get(f"{API}/locations/{site['id']}", headers=ours.as_("admin"))).json()
    assert again["name"] == site["name"] and again["version"] == site["version"]


async def test_uninstall_then_restore_keeps_locations_and_cabinets(platform):
    clinic = await open_clinic(platform, ["locations"], "loc-rt")
    async with clinic.http() as http:
        site = (
            await http.post(f"{API}/locations", json={"name": "Norte"}, headers=clinic.as_("admin"))
        ).json()
        await http.post(
            f"{API}/locations/{site['id']}/cabinets",
            json={"name": "N1"},
            headers=clinic.as_("admin"),
        )
    job = await run_job(
        platform, clinic.tenant, "lifecycle.uninstall", module="locations", cascade=True
    )
    assert job.state == "succeeded", job.error
    assert job.result["tables"]["locations"] == {"locations_locations": 2, "locations_cabinets": 1}
    job = await run_job(platform, clinic.tenant, "lifecycle.restore", module="locations")
    assert job.state == "succeeded", job.error
    async with platform.db.tenant(clinic.tenant.scope) as s:
        assert await s.scalar(select(func.count()).select_from(locations)) == 2
        assert await s.scalar(select(cabinets.c.name)) == "N1"
