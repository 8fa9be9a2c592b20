"""Reseller plans: the number of clinics, and which modules and country packs they may
install; exceeding them is refused with a problem that says why. Operators are not bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dentalpin.platform._audit import CLI
from dentalpin.platform._plans import counted_tenants
from tests.api.world import make_plan, make_reseller, wait
from tests.conftest import unique_slug
from tests.platform.identity import bearer, client, make_user, session
from tests.test_cli import Cli


async def test_the_number_of_clinics_is_limited(platform):
    plan = await make_plan(platform, max_tenants=3)
    reseller = await make_reseller(platform, plan=plan)  # owns one clinic already
    async with client(platform) as http:
        # Two at once for the last two slots, then one too many at once: the reseller row's
        # lock lets exactly the allowed number through.
        first = await asyncio.gather(
            *(
                http.post(
                    "/api/v1/tenants",
                    json={"slug": unique_slug("pl")},
                    headers=reseller.admin_headers,
                )
                for _ in range(3)
            )
        )
        statuses = sorted(r.status_code for r in first)
        assert statuses == [201, 201, 409], [r.text for r in first]
        refused = next(r for r in first if r.status_code == 409).json()
        assert refused["type"].endswith("/plan-limit-reached")
        assert f"plan '{plan}' allows 3 clinic(s)" in refused["detail"]
        async with platform.db.engine.connect() as conn:
            assert await counted_tenants(conn, reseller.id) == 3

        usage = await http.get(
            f"/api/v1/resellers/{reseller.id}/usage", headers=reseller.client_headers
        )
        assert usage.json()["tenants_counted"] == 3 and usage.json()["tenants_allowed"] == 3

        operator = bearer(await session(platform, await make_user(platform, operator=True), None))
        beyond = await http.post(
            "/api/v1/tenants",
            json={"slug": unique_slug("pl"), "reseller_id": str(reseller.id)},
            headers=operator,
        )
        assert beyond.status_code == 201, beyond.text  # the operator sells the plans

        # Archiving frees a slot.
        archived = await http.post(
            f"/api/v1/tenants/{reseller.tenant.slug}/archive", headers=operator
        )
        await wait(platform, archived.json()["id"])
        async with platform.db.engine.connect() as conn:
            assert await counted_tenants(conn, reseller.id) == 3


async def test_modules_and_country_packs_follow_the_plan(platform):
    no_packs = await make_reseller(platform, plan=await make_plan(platform, countries=[]))
    only_visits = await make_reseller(
        platform, plan=await make_plan(platform, modules=["fx_visits"])
    )
    spain = await make_reseller(platform, plan=await make_plan(platform, countries=["ES"]))
    async with client(platform) as http:

        async def install(reseller, module):
            return await http.post(
                f"/api/v1/tenants/{reseller.tenant.slug}/modules",
                json={"modules": [module]},
                headers=reseller.client_headers,
            )

        refused = await install(no_packs, "recall")
        assert refused.status_code == 403, refused.text
        assert refused.json()["type"].endswith("/plan-exceeded")
        assert "country pack for ES, PT" in refused.json()["detail"]
        catalogue = {
            m["name"]: m["allowed_by_plan"]
            for m in (
                await http.get(
                    f"/api/v1/tenants/{no_packs.tenant.slug}/modules",
                    headers=no_packs.admin_headers,
                )
            ).json()
        }
        assert catalogue["recall"] is False and catalogue["fx_visits"] is True
        assert catalogue["fx_people"] is True  # auto-install: the base product

        refused = await install(only_visits, "recall")
        assert refused.status_code == 403
        assert "module 'recall' is not part of plan" in refused.json()["detail"]
        allowed = await install(only_visits, "fx_visits")
        assert allowed.status_code == 202, allowed.text
        assert (await wait(platform, allowed.json()["id"])).state == "succeeded"

        allowed = await install(spain, "recall")
        assert allowed.status_code == 202, allowed.text
        await wait(platform, allowed.json()["id"])

        slug = unique_slug("pl")
        created = await http.post(
            "/api/v1/tenants",
            json={"slug": slug, "modules": ["recall"]},
            headers=no_packs.admin_headers,
        )
        assert created.status_code == 403, created.text
        # Refused inside the creating transaction: nothing of it is left.
        missing = await http.get(f"/api/v1/tenants/{slug}", headers=no_packs.admin_headers)
        assert missing.status_code == 404


async def test_plan_names_are_validated(platform, fresh_platform, tmp_path: Path):
    from dentalpin.platform._clients import create_reseller
    from dentalpin.platform._errors import InvalidInput

    async with platform.db.engine.begin() as conn:
        with pytest.raises(InvalidInput, match=r"no plan named 'platinum'.*starter"):
            await create_reseller(conn, "Unplanned Partner", "platinum", ctx=CLI)
    work = tmp_path / "cwd"
    work.mkdir()
    cli = Cli(fresh_platform, work)
    failed = cli("resellers", "create", "Dental Partners", "--plan", "gold", code=1)
    assert "no plan named 'gold'" in failed.output and "standard" in failed.output
    cli("resellers", "create", "Dental Partners", "--plan", "starter")
    listed = cli("resellers", "list", "--json").json()
    assert [(r["name"], r["plan"]) for r in listed] == [("Dental Partners", "starter")]
    plans = {p["name"]: p for p in cli("plans", "list", "--json").json()}
    assert set(plans) == {"starter", "standard", "pro"} and plans["starter"]["countries"] == []
    assert "none" in cli("plans", "list").output
    slug = unique_slug("cli")
    made = cli("tenants", "create", slug, "--reseller", "Dental Partners", "--json").json()
    assert made["reseller_id"] == listed[0]["id"]
    assert (
        "no reseller named" in cli("tenants", "create", slug, "--reseller", "Nobody", code=1).output
    )


async def test_the_migration_keeps_plans_resellers_already_had(fresh_platform):
    """Before 0005 a plan was free text: such plans become plans without limits."""
    from sqlalchemy import text

    from dentalpin.tenants import migrate_platform
    from dentalpin.tenants._fleet import platform_head
    from tests.platform.revisions import downgrade_platform

    async with fresh_platform.db.engine.connect() as conn:
        await downgrade_platform(conn, "0004_events")
        await conn.execute(
            text(
                "insert into platform.resellers (id, name, plan) "
                "values (gen_random_uuid(), 'Old Partner', 'Legacy Gold')"
            )
        )
        await conn.commit()
    assert await migrate_platform(fresh_platform) == platform_head()
    async with fresh_platform.db.engine.connect() as conn:
        row = (
            await conn.execute(text("select * from platform.plans where name = 'Legacy Gold'"))
        ).one()
        seeded = set((await conn.execute(text("select name from platform.plans"))).scalars())
    assert row.max_tenants is None and row.modules is None and row.countries is None
    assert seeded == {"starter", "standard", "pro", "Legacy Gold"}


async def audited(platform, target: str) -> list[tuple[str, dict]]:
    from sqlalchemy import text

    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            text("select action, details from platform.audit_log where target = :t order by id"),
            {"t": target},
        )
        return [(r.action, r.details) for r in rows]


async def test_operators_edit_plans_over_the_api(platform):
    from tests.api.test_approvals import clinic_admin
    from tests.platform.identity import host_of

    operator = bearer(await session(platform, await make_user(platform, operator=True), None))
    name = f"Clinic Plus {unique_slug('p')}"
    async with client(platform) as http:
        made = await http.post(
            "/api/v1/plans",
            json={"name": name, "description": "Up to two clinics", "max_tenants": 2},
            headers=operator,
        )
        assert made.status_code == 201, made.text
        assert made.json() == {
            "name": name,
            "description": "Up to two clinics",
            "max_tenants": 2,
            "modules": None,
            "countries": None,
        }
        for payload, status, words in (
            ({"name": name}, 409, "already exists"),
            ({"name": "x" * 41}, 422, ""),
            ({"name": "bad/name"}, 422, "a plan name is"),
            ({"name": "Typo", "modules": ["recal"]}, 422, "Did you mean 'recall'?"),
            ({"name": "Country", "countries": ["Spain"]}, 422, "two-letter country code"),
            ({"name": "Negative", "max_tenants": -1}, 422, ""),
        ):
            refused = await http.post("/api/v1/plans", json=payload, headers=operator)
            assert refused.status_code == status, (payload, refused.text)
            assert words in refused.json()["detail"].__str__()

        reseller = await make_reseller(platform)  # on "pro", with one clinic
        installing = await http.post(
            f"/api/v1/tenants/{reseller.tenant.slug}/modules",
            json={"modules": ["recall"]},
            headers=operator,
        )
        assert (await wait(platform, installing.json()["id"])).state == "succeeded"
        moved = await http.patch(
            f"/api/v1/resellers/{reseller.id}", json={"plan": name}, headers=operator
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["plan"] == name
        unknown = await http.patch(
            f"/api/v1/resellers/{reseller.id}", json={"plan": "gold"}, headers=operator
        )
        assert unknown.status_code == 422 and "no plan named 'gold'" in unknown.json()["detail"]

        # Tighten it below what the reseller has: it keeps its clinic and its modules.
        changed = await http.patch(
            f"/api/v1/plans/{name}",
            json={"max_tenants": 0, "modules": ["fx_visits"]},
            headers=operator,
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["description"] == "Up to two clinics"  # not sent: unchanged
        assert changed.json()["modules"] == ["fx_visits"]
        impact = changed.json()["impact"]
        assert impact["resellers_over_limit"] == [{"reseller": reseller.name, "clinics": 1}]
        assert impact["clinics_outside_plan"] == {reseller.tenant.slug: ["recall"]}
        beyond = await http.post(
            "/api/v1/tenants", json={"slug": unique_slug("pl")}, headers=reseller.admin_headers
        )
        assert beyond.status_code == 409 and "allows 0 clinic(s)" in beyond.json()["detail"]
        admin = await clinic_admin(platform, reseller.tenant)
        async with client(platform, host_of(reseller.tenant)) as clinic:
            allowed = await clinic.post(
                "/api/v1/modules", json={"modules": ["fx_visits", "recall"]}, headers=admin
            )
            assert allowed.status_code == 202, allowed.text  # recall is there already
            assert (await wait(platform, allowed.json()["id"])).state == "succeeded"
            refused = await clinic.post(
                "/api/v1/modules", json={"modules": ["odontogram"]}, headers=admin
            )
            assert refused.status_code == 403 and "not part of plan" in refused.json()["detail"]

        lifted = await http.patch(
            f"/api/v1/plans/{name}", json={"max_tenants": None}, headers=operator
        )
        assert lifted.json()["max_tenants"] is None and lifted.json()["modules"] == ["fx_visits"]
        assert lifted.json()["impact"]["resellers_over_limit"] == []
        nothing = await http.patch(f"/api/v1/plans/{name}", json={}, headers=operator)
        assert nothing.status_code == 422 and "say what to change" in nothing.json()["detail"]
        missing = await http.patch(
            "/api/v1/plans/nowhere", json={"max_tenants": 1}, headers=operator
        )
        assert missing.status_code == 404

        in_use = await http.delete(f"/api/v1/plans/{name}", headers=operator)
        assert in_use.status_code == 409 and "1 reseller(s) are on plan" in in_use.json()["detail"]
        await http.patch(f"/api/v1/resellers/{reseller.id}", json={"plan": "pro"}, headers=operator)
        gone = await http.delete(f"/api/v1/plans/{name}", headers=operator)
        assert gone.status_code == 204, gone.text
        listed = (await http.get("/api/v1/plans", headers=operator)).json()
        assert name not in {p["name"] for p in listed}
        for headers in (reseller.admin_headers, reseller.client_headers):  # operators only
            refused = await http.post("/api/v1/plans", json={"name": "Mine"}, headers=headers)
            assert refused.status_code == 403

    actions = [a for a, _ in await audited(platform, name)]
    assert actions == ["plan.created", "plan.changed", "plan.changed", "plan.deleted"]
    changes = [d for a, d in await audited(platform, reseller.name) if a == "reseller.plan_changed"]
    assert [(c["before"], c["after"]) for c in changes] == [("pro", name), (name, "pro")]


async def test_cli_edits_plans(platform, tmp_path: Path):
    cli = Cli(platform, tmp_path)
    name = f"cli-{unique_slug('plan')}"
    made = cli("plans", "create", name, "--max-clinics", "3", "--countries", "", "--json").json()
    assert (made["max_tenants"], made["modules"], made["countries"]) == (3, None, [])
    shown = cli("plans", "set", name, "--modules", "recall, fx_visits", "--all-countries")
    assert "modules: fx_visits, recall" in shown.output and "country packs: all" in shown.output
    changed = cli("plans", "set", name, "--unlimited", "--json").json()
    assert changed["max_tenants"] is None and changed["modules"] == ["fx_visits", "recall"]
    contradiction = cli("plans", "set", name, "--max-clinics", "2", "--unlimited", code=2)
    assert "contradict" in contradiction.output
    typo = cli("plans", "set", name, "--modules", "recal", code=1)
    assert "Did you mean 'recall'?" in typo.output
    reseller = await make_reseller(platform)
    await make_tenant_with_recall(platform, reseller)
    cli("resellers", "set-plan", reseller.name, name)
    tightened = cli("plans", "set", name, "--max-clinics", "1", "--modules", "fx_visits")
    assert f"reseller '{reseller.name}' has 2 clinics" in tightened.output
    assert "recall outside the plan" in tightened.output
    in_use = cli("plans", "delete", name, code=1)
    assert "1 reseller(s) are on plan" in in_use.output
    cli("resellers", "set-plan", reseller.name, "pro")
    cli("plans", "delete", name)
    assert name not in {p["name"] for p in cli("plans", "list", "--json").json()}
    assert "no plan named" in cli("plans", "delete", name, code=1).output


async def make_tenant_with_recall(platform, reseller) -> None:
    from dentalpin.tenants import create_tenant

    await create_tenant(platform, unique_slug("rc"), modules=["recall"], reseller_id=reseller.id)
