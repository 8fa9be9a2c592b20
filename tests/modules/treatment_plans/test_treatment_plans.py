"""Treatment plans over HTTP: items priced from the catalog, the status flow, quote
versions, acceptance, completing items, permissions and tenant isolation."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from dentalpin.platform._relay import deliver
from tests.modules.odontogram.clinic import PLANS, Clinic, make_clinic


@pytest.fixture
async def clinic(platform) -> Clinic:
    return await make_clinic(platform, "plans")


def plan_body(clinic: Clinic, **extra: Any) -> dict[str, Any]:
    body = {
        "patient_id": str(clinic.patient),
        "title": "Rehabilitación sector 3",
        "notes": "Paciente con bruxismo",
        "items": [
            {
                "catalog_item_id": str(clinic.treatments["filling"]),
                "teeth": [36, 37],
                "surfaces": ["O", "mesial"],
                "chart_condition": "filling",
                "discount_percent": "10",
            },
            {
                "catalog_item_id": str(clinic.treatments["crown"]),
                "teeth": [46],
                "chart_condition": "crown",
                "unit_price": "399.99",
            },
        ],
    }
    body.update(extra)
    return body


async def new_plan(clinic: Clinic, http: httpx.AsyncClient, **extra: Any) -> dict[str, Any]:
    response = await http.post(
        f"{PLANS}/plans", json=plan_body(clinic, **extra), headers=clinic.as_("dentist")
    )
    assert response.status_code == 201, response.text
    return response.json()


async def act(
    clinic: Clinic, http: httpx.AsyncClient, plan: dict, action: str, role: str = "dentist", **body
) -> httpx.Response:
    return await http.post(
        f"{PLANS}/plans/{plan['id']}/{action}", json=body, headers=clinic.as_(role)
    )


ACCEPT = {"method": "in_person", "accepted_by_name": "Lucía Martínez Ruiz"}


async def test_a_plan_prices_its_items_from_the_catalog(clinic):
    async with clinic.http() as http:
        plan = await new_plan(clinic, http)
    filling, crown = plan["items"]
    # Two teeth: quantity 2 at the catalog price, 10% off: 91.00 - 9.10.
    assert filling["description"] == "Obturación composite"
    assert filling["quantity"] == 2 and filling["unit_price"] == "45.50"
    assert filling["surfaces"] == ["mesial", "occlusal"]
    assert filling["line_total"] == "81.90"
    assert crown["unit_price"] == "399.99" and crown["line_total"] == "399.99"
    assert plan["status"] == "draft" and plan["item_count"] == 2
    assert (plan["subtotal"], plan["discount"], plan["total"]) == ("490.99", "9.10", "481.89")


async def test_discounts_round_to_the_cent(clinic):
    async with clinic.http() as http:
        plan = await new_plan(
            clinic,
            http,
            items=[
                {
                    "catalog_item_id": str(clinic.treatments["cleaning"]),
                    "unit_price": "33.33",
                    "discount_percent": "12.5",
                    "quantity": 3,
                }
            ],
        )
    # 99.99 * 12.5% = 12.49875 -> 12.50 off.
    assert plan["items"][0]["line_total"] == "87.49"
    assert (plan["subtotal"], plan["discount"], plan["total"]) == ("99.99", "12.50", "87.49")


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ({"teeth": [19]}, "tooth 19 is not an FDI tooth number"),
        ({"teeth": [11], "surfaces": ["occlusal"]}, "tooth 11 (incisor) has no occlusal surface"),
        ({"surfaces": ["mesial"]}, "surfaces need the teeth"),
        ({"teeth": [36], "chart_condition": "filling"}, "filling sits on tooth surfaces"),
        ({"chart_condition": "crown"}, "needs the teeth"),
        ({"catalog_item_id": str(uuid.UUID(int=7))}, "does not exist"),
    ],
)
async def test_items_are_checked_like_the_chart(clinic, item, needle):
    body = {"catalog_item_id": str(clinic.treatments["filling"]), **item}
    async with clinic.http() as http:
        response = await http.post(
            f"{PLANS}/plans", json=plan_body(clinic, items=[body]), headers=clinic.as_("dentist")
        )
        assert response.status_code == 422, response.text
        assert needle in response.json()["detail"]
        listed = await http.get(f"{PLANS}/plans", headers=clinic.as_("dentist"))
        assert listed.json()["total"] == 0


async def test_edits_need_the_current_version(clinic):
    async with clinic.http() as http:
        plan = await new_plan(clinic, http)
        url = f"{PLANS}/plans/{plan['id']}"
        missing = await http.patch(url, json={"title": "X"}, headers=clinic.as_("dentist"))
        assert missing.status_code == 428
        ok = await http.patch(
            url,
            json={"title": "Plan revisado"},
            headers={**clinic.as_("dentist"), "If-Match": f'"{plan["version"]}"'},
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["title"] == "Plan revisado"
        assert ok.headers["etag"] == f'"{plan["version"] + 1}"'
        stale = await http.patch(
            url,
            json={"title": "Otro"},
            headers={**clinic.as_("dentist"), "If-Match": f'"{plan["version"]}"'},
        )
        assert stale.status_code == 412

        item = plan["items"][0]
        item_url = f"{url}/items/{item['id']}"
        changed = await http.patch(
            item_url,
            json={"quantity": 1, "teeth": [36]},
            headers={**clinic.as_("dentist"), "If-Match": f'"{item["version"]}"'},
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["line_total"] == "40.95"
        gone = await http.delete(
            item_url, headers={**clinic.as_("dentist"), "If-Match": f'"{item["version"]}"'}
        )
        assert gone.status_code == 412
        gone = await http.delete(
            item_url, headers={**clinic.as_("dentist"), "If-Match": changed.headers["etag"]}
        )
        assert gone.status_code == 204
        summary = (await http.get(f"{url}/summary", headers=clinic.as_("dentist"))).json()
        assert summary["item_count"] == 1 and summary["total"] == "399.99"


async def test_the_status_flow_with_quote_versions_and_acceptance(clinic):
    async with clinic.http() as http:
        plan = await new_plan(clinic, http)
        early = await act(clinic, http, plan, "accept", **ACCEPT)
        assert early.status_code == 409
        assert "a draft plan cannot become accepted" in early.json()["detail"]

        v1 = await act(clinic, http, plan, "propose", valid_until="2099-12-31")
        assert v1.status_code == 201, v1.text
        assert v1.json()["number"] == 1 and v1.json()["total"] == "481.89"
        # A proposed plan's items are frozen; revising reopens it.
        blocked = await http.post(
            f"{PLANS}/plans/{plan['id']}/items",
            json={"catalog_item_id": str(clinic.treatments["cleaning"])},
            headers=clinic.as_("dentist"),
        )
        assert blocked.status_code == 409 and "Revise it first" in blocked.json()["detail"]
        assert (await act(clinic, http, plan, "revise")).json()["status"] == "draft"
        added = await http.post(
            f"{PLANS}/plans/{plan['id']}/items",
            json={"catalog_item_id": str(clinic.treatments["cleaning"])},
            headers=clinic.as_("dentist"),
        )
        assert added.status_code == 201, added.text
        v2 = (await act(clinic, http, plan, "propose")).json()
        assert v2["number"] == 2 and v2["total"] == "531.89"

        stale = await act(clinic, http, plan, "accept", quote_id=v1.json()["id"], **ACCEPT)
        assert stale.status_code == 409 and "latest" in stale.json()["detail"]
        unsigned = await act(
            clinic, http, plan, "accept", method="signature", accepted_by_name="Lucía"
        )
        assert unsigned.status_code == 422
        accepted = await act(
            clinic,
            http,
            plan,
            "accept",
            method="signature",
            accepted_by_name="Lucía Martínez Ruiz",
            evidence="data:image/png;base64,iVBORw0KGgo=",
        )
        assert accepted.status_code == 200, accepted.text
        body = accepted.json()
        assert body["status"] == "accepted" and body["accepted_at"]
        assert body["acceptance"]["quote_id"] == v2["id"]
        assert body["acceptance"]["method"] == "signature"
        assert body["acceptance"]["recorded_by"] == str(clinic.users["dentist"])
        assert [q["number"] for q in body["quotes"]] == [1, 2]

        quotes = (
            await http.get(
                f"{PLANS}/quotes", params={"plan_id": plan["id"]}, headers=clinic.as_("dentist")
            )
        ).json()
        assert [(q["number"], q["accepted"]) for q in quotes["items"]] == [(2, True), (1, False)]
        # Quote 1 is a snapshot: the item added later is not in it.
        assert len(quotes["items"][1]["lines"]) == 2 and len(quotes["items"][0]["lines"]) == 3

        again = await act(clinic, http, plan, "propose")
        assert again.status_code == 409
        assert "from accepted it can go to cancelled, in_progress" in again.json()["detail"]


async def test_completing_items_moves_the_plan_to_the_end(clinic):
    async with clinic.http() as http:
        plan = await new_plan(clinic, http)
        first, second = plan["items"]
        url = f"{PLANS}/plans/{plan['id']}/items"
        too_soon = await http.post(
            f"{url}/{first['id']}/complete", json={}, headers=clinic.as_("dentist")
        )
        assert too_soon.status_code == 409
        await act(clinic, http, plan, "propose")
        await act(clinic, http, plan, "accept", **ACCEPT)

        done = await http.post(
            f"{url}/{first['id']}/complete", json={}, headers=clinic.as_("hygienist")
        )
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "completed"
        assert done.json()["completed_by"] == str(clinic.users["hygienist"])
        twice = await http.post(
            f"{url}/{first['id']}/complete", json={}, headers=clinic.as_("dentist")
        )
        assert twice.status_code == 409
        summary = await http.get(
            f"{PLANS}/plans/{plan['id']}/summary", headers=clinic.as_("dentist")
        )
        assert summary.json()["status"] == "in_progress"
        early = await act(clinic, http, plan, "complete")
        assert early.status_code == 409 and "1 item(s) are still pending" in early.json()["detail"]

        await http.post(f"{url}/{second['id']}/complete", json={}, headers=clinic.as_("dentist"))
        final = (
            await http.get(f"{PLANS}/plans/{plan['id']}", headers=clinic.as_("dentist"))
        ).json()
        assert final["status"] == "completed" and final["completed_at"]
        closed = await act(clinic, http, plan, "cancel", reason="too late")
        assert closed.status_code == 409
        assert "nothing: it is closed" in closed.json()["detail"]


async def test_rejecting_and_cancelling_close_a_plan(clinic):
    async with clinic.http() as http:
        rejected = await new_plan(clinic, http)
        await act(clinic, http, rejected, "propose")
        answer = await act(clinic, http, rejected, "reject", reason="prefers to wait")
        assert answer.json()["status"] == "rejected"
        assert answer.json()["close_reason"] == "prefers to wait"
        assert (await act(clinic, http, rejected, "revise")).status_code == 409

        cancelled = await new_plan(clinic, http)
        assert (await act(clinic, http, cancelled, "cancel")).json()["status"] == "cancelled"
        assert (await act(clinic, http, cancelled, "propose")).status_code == 409

        listed = await http.get(
            f"{PLANS}/plans",
            params={"status": ["rejected", "cancelled"], "sort": "created_at"},
            headers=clinic.as_("receptionist"),
        )
        assert [p["id"] for p in listed.json()["items"]] == [rejected["id"], cancelled["id"]]


async def test_lists_page_filter_and_sort(clinic):
    async with clinic.http() as http:
        for title in ("B", "A", "C"):
            await new_plan(clinic, http, title=title)
        await new_plan(clinic, http, title="Z", patient_id=str(clinic.other_patient))
        page = (
            await http.get(
                f"{PLANS}/plans",
                params={"patient_id": str(clinic.patient), "sort": "title", "limit": 2},
                headers=clinic.as_("dentist"),
            )
        ).json()
        assert page["total"] == 3 and [p["title"] for p in page["items"]] == ["A", "B"]
        bad = await http.get(f"{PLANS}/plans?sort=notes", headers=clinic.as_("dentist"))
        assert bad.status_code == 422


async def test_unknown_patient_or_plan(clinic):
    async with clinic.http() as http:
        response = await http.post(
            f"{PLANS}/plans",
            json=plan_body(clinic, patient_id=str(uuid.uuid4())),
            headers=clinic.as_("dentist"),
        )
        assert response.status_code == 404
        missing = await http.get(f"{PLANS}/plans/{uuid.uuid4()}", headers=clinic.as_("dentist"))
        assert missing.status_code == 404


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("receptionist", {"summary"}),
        ("accountant", {"summary", "quotes"}),
        ("assistant", {"summary", "detail", "quotes"}),
        ("hygienist", {"summary", "detail", "quotes", "complete"}),
        ("dentist", {"summary", "detail", "quotes", "complete", "write"}),
    ],
)
async def test_who_sees_and_does_what(clinic, role, allowed):
    async with clinic.http() as http:
        plan = await new_plan(clinic, http)
        quote = (await act(clinic, http, plan, "propose")).json()
        await act(clinic, http, plan, "accept", **ACCEPT)
        headers = clinic.as_(role)
        item = plan["items"][0]["id"]
        calls = {
            "summary": [
                http.get(f"{PLANS}/plans", headers=headers),
                http.get(f"{PLANS}/plans/{plan['id']}/summary", headers=headers),
            ],
            "detail": [http.get(f"{PLANS}/plans/{plan['id']}", headers=headers)],
            "quotes": [
                http.get(f"{PLANS}/quotes", headers=headers),
                http.get(f"{PLANS}/quotes/{quote['id']}", headers=headers),
            ],
            "complete": [
                http.post(
                    f"{PLANS}/plans/{plan['id']}/items/{item}/complete", json={}, headers=headers
                )
            ],
            "write": [http.post(f"{PLANS}/plans", json=plan_body(clinic), headers=headers)],
        }
        for what, requests in calls.items():
            for request in requests:
                response = await request
                ok = response.status_code < 400
                assert ok == (what in allowed), (role, what, response.status_code, response.text)
                if what == "summary" and ok:
                    summary = response.json()
                    summary = summary["items"][0] if "items" in summary else summary
                    assert "notes" not in summary and "items" not in summary


async def test_accounts_see_quote_prices_without_teeth(clinic):
    async with clinic.http() as http:
        plan = await new_plan(clinic, http)
        await act(clinic, http, plan, "propose")
        for role, teeth in (("accountant", None), ("dentist", [36, 37])):
            quotes = (await http.get(f"{PLANS}/quotes", headers=clinic.as_(role))).json()
            line = quotes["items"][0]["lines"][0]
            assert line["teeth"] == teeth
            assert line["unit_price"] == "45.50" and line["line_total"] == "81.90"


async def test_another_clinic_cannot_reach_a_plan(platform, clinic):
    other = await make_clinic(platform, "plans-b")
    async with clinic.http() as http:
        plan = await new_plan(clinic, http)
        quote = (await act(clinic, http, plan, "propose")).json()
    async with other.http() as http:
        headers = other.as_("dentist")
        for response in (
            await http.get(f"{PLANS}/plans/{plan['id']}", headers=headers),
            await http.get(f"{PLANS}/plans/{plan['id']}/summary", headers=headers),
            await http.get(f"{PLANS}/quotes/{quote['id']}", headers=headers),
            await act(other, http, plan, "accept", **ACCEPT),
            await act(other, http, plan, "cancel"),
            await http.patch(
                f"{PLANS}/plans/{plan['id']}",
                json={"title": "mine"},
                headers={**headers, "If-Match": '"1"'},
            ),
        ):
            assert response.status_code == 404, response.text
        assert (await http.get(f"{PLANS}/plans", headers=headers)).json()["total"] == 0
        assert (await http.get(f"{PLANS}/quotes", headers=headers)).json()["total"] == 0
    async with clinic.http() as http:
        again = (
            await http.get(f"{PLANS}/plans/{plan['id']}", headers=clinic.as_("dentist"))
        ).json()
        assert again["status"] == "proposed" and again["title"] == plan["title"]


async def tenant_rows(clinic: Clinic, sql: str) -> list[Any]:
    async with clinic.platform.db.tenant(clinic.tenant.scope) as s:
        return list(await s.execute(text(sql)))


async def test_completed_items_are_charted_once_on_the_odontogram(clinic):
    async with clinic.http() as http:
        caries = await clinic.entry(
            http, kind="condition", tooth=36, surfaces=["O", "D"], condition="caries"
        )
        assert caries.status_code == 201
        plan = await new_plan(clinic, http)
        filling, crown = plan["items"]
        await act(clinic, http, plan, "propose")
        await act(clinic, http, plan, "accept", **ACCEPT)
        done = await http.post(
            f"{PLANS}/plans/{plan['id']}/items/{filling['id']}/complete",
            json={},
            headers=clinic.as_("dentist"),
        )
        assert done.status_code == 200
        await clinic.platform.nudge.drain()

        chart = (await http.get(f"{clinic.chart()}/chart", headers=clinic.as_("dentist"))).json()
        teeth = {t["tooth"]: t for t in chart["teeth"]}
        assert set(teeth) == {36, 37}  # the crown on 46 is not done yet
        assert {c["condition"]: c["surfaces"] for c in teeth[36]["conditions"]} == {
            "caries": ["distal"],
            "filling": ["mesial", "occlusal"],
        }
        history = (
            await http.get(
                f"{clinic.chart()}/history",
                params={"kind": "treatment"},
                headers=clinic.as_("dentist"),
            )
        ).json()
        assert {(e["tooth"], e["source"], e["source_ref"]) for e in history["items"]} == {
            (36, "treatment_plan", filling["id"]),
            (37, "treatment_plan", filling["id"]),
        }
        assert {e["recorded_by"] for e in history["items"]} == {str(clinic.users["dentist"])}
        assert {e["occurred_at"] for e in history["items"]} == {done.json()["completed_at"]}

    # As if the worker died after committing but before the broker heard of it: the
    # delivery runs again, the inbox keeps the chart from getting the entries twice.
    await tenant_rows(clinic, "update _deliveries set state = 'pending' returning id")
    report = await deliver(clinic.platform, clinic.tenant.id)
    assert report.delivered >= 1
    count = await tenant_rows(
        clinic, "select count(*) from odontogram_entries where source_ref is not null"
    )
    assert count[0][0] == 2


async def test_the_plan_announces_what_happens_to_it(clinic):
    async with clinic.http() as http:
        plan = await new_plan(clinic, http)
        await act(clinic, http, plan, "propose")
        await act(clinic, http, plan, "accept", **ACCEPT)
        for item in plan["items"]:
            await http.post(
                f"{PLANS}/plans/{plan['id']}/items/{item['id']}/complete",
                json={},
                headers=clinic.as_("dentist"),
            )
    outbox = await tenant_rows(clinic, "select name, payload from _outbox order by seq")
    moves = [
        (p["from_status"], p["to_status"])
        for n, p in outbox
        if n == "treatment_plans.plan_status_changed"
    ]
    assert moves == [
        ("draft", "proposed"),
        ("proposed", "accepted"),
        ("accepted", "in_progress"),
        ("in_progress", "completed"),
    ]
    quotes = [p for n, p in outbox if n == "treatment_plans.quote_issued"]
    assert [(q["number"], q["total"]) for q in quotes] == [(1, "481.89")]
    completed = [p for n, p in outbox if n == "treatment_plans.item_completed"]
    assert [c["teeth"] for c in completed] == [[36, 37], [46]]
