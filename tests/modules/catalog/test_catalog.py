"""catalog: treatments with codes, durations and VAT types (exempt by default), categories,
price lists per location and the effective price; roles, tenant isolation, round trip."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select

from dentalpin.modules.catalog.models import prices
from tests.modules.members import if_match, open_clinic, problem, run_job

API = "/api/v1/catalog"
LOCATIONS = "/api/v1/locations/locations"


async def _default_location(http, clinic) -> str:
    body = (await http.get(LOCATIONS, headers=clinic.as_("admin"))).json()
    return next(s["id"] for s in body["items"] if s["is_default"])


async def test_treatments_are_vat_exempt_by_default_and_codes_are_unique(platform):
    clinic = await open_clinic(platform, ["catalog"], "cat-items")
    admin = clinic.as_("admin")
    async with clinic.http() as http:
        created = await http.post(
            f"{API}/items",
            json={
                "code": "OBT-01",
                "name": "Obturación composite",
                "category": "Conservadora",
                "default_price": "45.50",
                "duration_minutes": 45,
            },
            headers=admin,
        )
        assert created.status_code == 201, created.text
        item = created.json()
        assert item["vat_type"] == "exempt" and item["default_price"] == "45.50"
        problem(
            await http.post(f"{API}/items", json={"code": "OBT-01", "name": "x"}, headers=admin),
            409,
        )
        bad = await http.post(
            f"{API}/items",
            json={"code": "BL-1", "name": "Blanqueamiento", "vat_type": "luxury"},
            headers=admin,
        )
        problem(bad, 422)
        problem(
            await http.post(
                f"{API}/items",
                json={"code": "N-1", "name": "x", "default_price": "-1"},
                headers=admin,
            ),
            422,
        )
        whitening = await http.post(
            f"{API}/items",
            json={
                "code": "BL-1",
                "name": "Blanqueamiento",
                "category": "Estética",
                "default_price": "250",
                "vat_type": "general",
                "duration_minutes": 60,
            },
            headers=admin,
        )
        assert whitening.json()["vat_type"] == "general"

        url = f"{API}/items/{item['id']}"
        problem(await http.patch(url, json={"name": "y"}, headers=admin), 428)
        renamed = await http.patch(
            url, json={"default_price": "48.00"}, headers={**admin, **if_match(created)}
        )
        assert renamed.json()["default_price"] == "48.00" and renamed.json()["version"] == 2
        problem(
            await http.patch(url, json={"name": "z"}, headers={**admin, **if_match(created)}), 412
        )
        retired = await http.patch(
            url, json={"active": False}, headers={**admin, **if_match(renamed)}
        )
        assert retired.json()["active"] is False

        listed = (await http.get(f"{API}/items?active=true", headers=admin)).json()
        assert [i["code"] for i in listed["items"]] == ["BL-1"]
        everything = (await http.get(f"{API}/items?sort=-default_price", headers=admin)).json()
        assert [i["code"] for i in everything["items"]] == ["BL-1", "OBT-01"]
        found = (await http.get(f"{API}/items?q=obtur", headers=admin)).json()
        assert [i["code"] for i in found["items"]] == ["OBT-01"]
        categories = (await http.get(f"{API}/categories", headers=admin)).json()
        assert categories == [{"name": "Estética", "items": 1}]
        vat = {v["vat_type"]: v for v in (await http.get(f"{API}/vat-types", headers=admin)).json()}
        assert vat["exempt"]["rate"] == "0" and "20.Uno.5" in vat["exempt"]["description"]
        assert vat["general"]["rate"] == "21"


async def test_effective_price_is_the_locations_list_price_else_the_default(platform):
    clinic = await open_clinic(platform, ["catalog"], "cat-price")
    admin = clinic.as_("admin")
    async with clinic.http() as http:
        home = await _default_location(http, clinic)
        other = (await http.post(LOCATIONS, json={"name": "Norte"}, headers=admin)).json()["id"]
        item = (
            await http.post(
                f"{API}/items",
                json={"code": "LIMP", "name": "Limpieza", "default_price": "50"},
                headers=admin,
            )
        ).json()
        created = await http.post(
            f"{API}/price-lists", json={"name": "Tarifa Centro", "location_id": home}, headers=admin
        )
        assert created.status_code == 201, created.text
        price_list = created.json()
        second = await http.post(
            f"{API}/price-lists", json={"name": "Otra", "location_id": home}, headers=admin
        )
        assert "already has a price list" in problem(second, 409)["detail"]
        ghost = "00000000-0000-0000-0000-000000000001"
        problem(
            await http.post(
                f"{API}/price-lists", json={"name": "G", "location_id": ghost}, headers=admin
            ),
            404,
        )

        put = await http.put(
            f"{API}/price-lists/{price_list['id']}/prices/{item['id']}",
            json={"price": "42.00"},
            headers=admin,
        )
        assert put.status_code == 200, put.text
        assert put.json()["price"] == "42.00" and put.json()["default_price"] == "50.00"
        await http.put(
            f"{API}/price-lists/{price_list['id']}/prices/{item['id']}",
            json={"price": "44.00"},
            headers=admin,
        )
        listed = (
            await http.get(f"{API}/price-lists/{price_list['id']}/prices", headers=admin)
        ).json()
        assert [(p["code"], p["price"]) for p in listed["items"]] == [("LIMP", "44.00")]

        at_home = (
            await http.get(f"{API}/items/{item['id']}/price?location_id={home}", headers=admin)
        ).json()
        assert at_home["price"] == "44.00" and at_home["source"] == "price_list"
        assert at_home["vat_type"] == "exempt" and at_home["vat_rate"] == "0"
        elsewhere = (
            await http.get(f"{API}/items/{item['id']}/price?location_id={other}", headers=admin)
        ).json()
        assert elsewhere["price"] == "50.00" and elsewhere["source"] == "default"
        no_location = (await http.get(f"{API}/items/{item['id']}/price", headers=admin)).json()
        assert no_location["source"] == "default"

        # An inactive list no longer sets prices; removing a price falls back to the default.
        off = await http.patch(
            f"{API}/price-lists/{price_list['id']}",
            json={"active": False},
            headers={**admin, **if_match(created)},
        )
        assert off.status_code == 200, off.text
        again = (
            await http.get(f"{API}/items/{item['id']}/price?location_id={home}", headers=admin)
        ).json()
        assert again["source"] == "default"
        gone = await http.delete(
            f"{API}/price-lists/{price_list['id']}/prices/{item['id']}", headers=admin
        )
        assert gone.status_code == 204
        problem(
            await http.delete(
                f"{API}/price-lists/{price_list['id']}/prices/{item['id']}", headers=admin
            ),
            404,
        )


async def test_roles_clinical_staff_and_accountants_read_only_admins_write(platform):
    clinic = await open_clinic(platform, ["catalog"], "cat-roles")
    async with clinic.http() as http:
        for role in ("receptionist", "accountant", "dentist", "hygienist"):
            assert (await http.get(f"{API}/items", headers=clinic.as_(role))).status_code == 200
            refused = await http.post(
                f"{API}/items", json={"code": role, "name": "x"}, headers=clinic.as_(role)
            )
            assert "catalog.item.write" in problem(refused, 403)["detail"]
            problem(
                await http.post(
                    f"{API}/price-lists", json={"name": role}, headers=clinic.as_(role)
                ),
                403,
            )


async def test_another_clinic_cannot_read_or_change_our_catalog(platform):
    ours = await open_clinic(platform, ["catalog"], "cat-iso-a")
    theirs = await open_clinic(platform, ["catalog"], "cat-iso-b")
    async with ours.http() as http:
        item = (
            await http.post(
                f"{API}/items", json={"code": "X1", "name": "Ours"}, headers=ours.as_("admin")
            )
        ).json()
        plist = (
            await http.post(f"{API}/price-lists", json={"name": "Ours"}, headers=ours.as_("admin"))
        ).json()
    async with theirs.http() as http:
        admin = theirs.as_("admin")
        problem(await http.get(f"{API}/items/{item['id']}", headers=admin), 404)
        problem(
            await http.patch(
                f"{API}/items/{item['id']}",
                json={"name": "Mine"},
                headers={**admin, "If-Match": '"1"'},
            ),
            404,
        )
        problem(await http.get(f"{API}/price-lists/{plist['id']}", headers=admin), 404)
        problem(
            await http.put(
                f"{API}/price-lists/{plist['id']}/prices/{item['id']}",
                json={"price": "1"},
                headers=admin,
            ),
            404,
        )
        assert (await http.get(f"{API}/items", headers=admin)).json()["total"] == 0
    async with ours.http() as http:
        assert (await http.get(f"{API}/items/{item['id']}", headers=ours.as_("admin"))).json()[
            "name"
        ] == "Ours"


async def test_uninstall_then_restore_keeps_items_lists_and_prices(platform):
    clinic = await open_clinic(platform, ["catalog"], "cat-rt")
    admin = clinic.as_("admin")
    async with clinic.http() as http:
        item = (
            await http.post(
                f"{API}/items",
                json={"code": "C1", "name": "Corona", "default_price": "400"},
                headers=admin,
            )
        ).json()
        plist = (
            await http.post(f"{API}/price-lists", json={"name": "Mutua"}, headers=admin)
        ).json()
        await http.put(
            f"{API}/price-lists/{plist['id']}/prices/{item['id']}",
            json={"price": "380"},
            headers=admin,
        )
    job = await run_job(
        platform, clinic.tenant, "lifecycle.uninstall", module="catalog", cascade=True
    )
    assert job.state == "succeeded", job.error
    assert job.result["tables"]["catalog"] == {
        "catalog_items": 1,
        "catalog_price_lists": 1,
        "catalog_prices": 1,
    }
    job = await run_job(platform, clinic.tenant, "lifecycle.restore", module="catalog")
    assert job.state == "succeeded", job.error
    async with platform.db.tenant(clinic.tenant.scope) as s:
        assert await s.scalar(select(prices.c.price)) == Decimal("380.00")


async def test_a_member_limited_to_one_location_manages_only_its_price_list(platform):
    clinic = await open_clinic(platform, ["catalog"], "cat-limit")
    admin = clinic.as_("admin")
    async with clinic.http() as http:
        home = await _default_location(http, clinic)
        north = (await http.post(LOCATIONS, json={"name": "Norte"}, headers=admin)).json()["id"]
        item = (
            await http.post(f"{API}/items", json={"code": "L1", "name": "Limpieza"}, headers=admin)
        ).json()
        home_list = (
            await http.post(
                f"{API}/price-lists", json={"name": "Centro", "location_id": home}, headers=admin
            )
        ).json()
        tariff = (
            await http.post(f"{API}/price-lists", json={"name": "Mutua"}, headers=admin)
        ).json()
        await clinic.member("north_admin", ["admin"], (north,))
        limited = clinic.as_("north_admin")

        seen = (await http.get(f"{API}/price-lists", headers=limited)).json()
        assert [p["name"] for p in seen["items"]] == ["Mutua"]  # clinic-wide lists stay visible
        problem(await http.get(f"{API}/price-lists/{home_list['id']}", headers=limited), 404)
        problem(
            await http.put(
                f"{API}/price-lists/{home_list['id']}/prices/{item['id']}",
                json={"price": "1"},
                headers=limited,
            ),
            404,
        )
        problem(
            await http.post(
                f"{API}/price-lists", json={"name": "X", "location_id": home}, headers=limited
            ),
            404,
        )
        wide = await http.put(
            f"{API}/price-lists/{tariff['id']}/prices/{item['id']}",
            json={"price": "1"},
            headers=limited,
        )
        assert "every location" in problem(wide, 403)["detail"]
        own = await http.post(
            f"{API}/price-lists", json={"name": "Norte", "location_id": north}, headers=limited
        )
        assert own.status_code == 201, own.text
        priced = await http.put(
            f"{API}/price-lists/{own.json()['id']}/prices/{item['id']}",
            json={"price": "9.90"},
            headers=limited,
        )
        assert priced.status_code == 200, priced.text
