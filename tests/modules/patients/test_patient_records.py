"""patients: medical alerts flagged wherever the patient appears, consents with who and
when, quick search ignoring accents and case, GDPR export, and the retention veto."""

from __future__ import annotations

from sqlalchemy import func, select, text

from dentalpin.modules.patients.models import patients
from tests.modules.members import if_match, open_clinic, problem, run_job

API = "/api/v1/patients"


async def register(http, clinic, **fields) -> dict:
    body = {"given_name": "José", "family_name": "Núñez Pérez", **fields}
    response = await http.post(f"{API}/patients", json=body, headers=clinic.as_("admin"))
    assert response.status_code == 201, response.text
    return response.json()


async def test_alerts_flag_the_patient_everywhere_and_details_need_alert_read(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-alert")
    async with clinic.http() as http:
        patient = await register(http, clinic)
        url = f"{API}/patients/{patient['id']}"
        refused = await http.post(
            f"{url}/alerts",
            json={"kind": "allergy", "description": "Penicilina"},
            headers=clinic.as_("receptionist"),
        )
        problem(refused, 403)
        allergy = await http.post(
            f"{url}/alerts",
            json={"kind": "allergy", "description": "Alergia a penicilina", "severity": "high"},
            headers=clinic.as_("dentist"),
        )
        assert allergy.status_code == 201, allergy.text
        assert allergy.json()["recorded_by"] == str(clinic.users["dentist"])
        await http.post(
            f"{url}/alerts",
            json={"kind": "medication", "description": "Sintrom"},
            headers=clinic.as_("hygienist"),
        )
        problem(
            await http.post(
                f"{url}/alerts",
                json={"kind": "mood", "description": "x"},
                headers=clinic.as_("dentist"),
            ),
            422,
        )

        # The front desk sees that there are alerts, and how serious, but not what they say.
        desk_view = (await http.get(url, headers=clinic.as_("receptionist"))).json()["alerts"]
        assert desk_view == {"count": 2, "highest_severity": "high", "items": None}
        listed = (await http.get(f"{API}/patients", headers=clinic.as_("receptionist"))).json()
        assert listed["items"][0]["alerts"]["count"] == 2
        assert "penicilina" not in str(listed).lower()
        problem(await http.get(f"{url}/alerts", headers=clinic.as_("receptionist")), 403)
        dentist_view = (await http.get(url, headers=clinic.as_("dentist"))).json()["alerts"]
        assert [a["description"] for a in dentist_view["items"]] == [
            "Alergia a penicilina",
            "Sintrom",
        ]

        resolved = await http.patch(
            f"{API}/alerts/{allergy.json()['id']}",
            json={"resolved": True},
            headers={**clinic.as_("dentist"), **if_match(allergy)},
        )
        assert resolved.status_code == 200 and resolved.json()["resolved_at"]
        problem(
            await http.patch(
                f"{API}/alerts/{allergy.json()['id']}",
                json={"severity": "low"},
                headers=clinic.as_("dentist"),
            ),
            428,
        )
        after = (await http.get(url, headers=clinic.as_("assistant"))).json()["alerts"]
        assert after["count"] == 1 and after["highest_severity"] == "medium"
        history = (
            await http.get(f"{url}/alerts?include_resolved=true", headers=clinic.as_("assistant"))
        ).json()
        assert len(history) == 2
        problem(
            await http.patch(
                f"{API}/alerts/{allergy.json()['id']}",
                json={"resolved": False},
                headers={**clinic.as_("assistant"), "If-Match": '"2"'},
            ),
            403,
        )


async def test_consents_keep_who_and_when_and_the_latest_answer_counts(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-consent")
    async with clinic.http() as http:
        patient = await register(http, clinic)
        url = f"{API}/patients/{patient['id']}/consents"
        desk = clinic.as_("receptionist")
        first = await http.post(url, json={"kind": "communications", "granted": True}, headers=desk)
        assert first.status_code == 201, first.text
        assert (
            first.json()["recorded_by"] == str(clinic.users["receptionist"])
            and first.json()["recorded_at"]
        )
        await http.post(
            url,
            json={"kind": "data_processing", "granted": True, "note": "Firmado en papel"},
            headers=desk,
        )
        await http.post(
            url, json={"kind": "communications", "granted": False}, headers=clinic.as_("admin")
        )
        problem(
            await http.post(url, json={"kind": "marketing", "granted": True}, headers=desk), 422
        )
        state = (await http.get(url, headers=desk)).json()
    assert state["current"]["communications"]["granted"] is False
    assert state["current"]["communications"]["recorded_by"] == str(clinic.users["admin"])
    assert state["current"]["data_processing"]["note"] == "Firmado en papel"
    assert len(state["history"]) == 3


async def test_quick_search_ignores_accents_and_case_and_finds_phones_and_documents(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-search")
    async with clinic.http() as http:
        jose = await register(
            http, clinic, phone="+34 600 11 22 33", document_type="dni", document_number="12345678Z"
        )
        maria = await register(
            http, clinic, given_name="María", family_name="Ibáñez Muñoz", phone="611223344"
        )
        await register(http, clinic, given_name="Josefa", family_name="Ortega")
        ada = clinic.as_("receptionist")

        async def found(q: str) -> list[str]:
            body = (await http.get(f"{API}/patients", params={"q": q}, headers=ada)).json()
            return [p["id"] for p in body["items"]]

        assert await found("nuñez") == [jose["id"]]
        assert await found("NUNEZ jose") == [jose["id"]]
        assert await found("ibanez") == [maria["id"]]
        assert await found("maría muñoz") == [maria["id"]]
        assert await found("600 11 22 33") == [jose["id"]]
        assert await found("600112233") == [jose["id"]]
        assert await found("12345678z") == [jose["id"]]
        assert set(await found("jose")) == {jose["id"]} | {p for p in await found("josefa")}
        assert (await found("jose"))[0] == jose["id"]  # the closer match first
        assert await found("100%_") == []
        assert await found("zzz") == []
        by_number = (
            await http.get(f"{API}/patients", params={"sort": "-number"}, headers=ada)
        ).json()
        assert by_number["total"] == 3 and by_number["items"][-1]["id"] == jose["id"]
        problem(await http.get(f"{API}/patients", params={"sort": "phone"}, headers=ada), 422)
        paged = (
            await http.get(f"{API}/patients", params={"limit": 1, "offset": 1}, headers=ada)
        ).json()
        assert paged["total"] == 3 and len(paged["items"]) == 1
        problem(await http.get(f"{API}/patients", params={"limit": 0}, headers=ada), 422)


async def test_search_uses_the_trigram_index(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-index")
    async with platform.db.tenant(clinic.tenant.scope) as s:
        await s.execute(
            patients.insert(),
            [{"given_name": f"Paciente{i}", "family_name": f"Apellido{i}"} for i in range(2000)],
        )
        assert await s.scalar(select(func.count()).select_from(patients)) == 2000
        await s.execute(text("analyze patients_patients"))
        await s.execute(text("set local enable_seqscan = off"))
        plan = "\n".join(
            r[0]
            for r in await s.execute(
                text(
                    "explain select id from patients_patients "
                    "where search like '%' || f_unaccent(lower('apellido1234')) || '%'"
                )
            )
        )
    assert "ix_patients_patients_search" in plan, plan


async def test_gdpr_export_holds_the_whole_record(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-export")
    async with clinic.http() as http:
        mother = await register(http, clinic, given_name="Marta", birth_date="1985-01-01")
        child = await register(
            http,
            clinic,
            given_name="Lucas",
            birth_date="2020-02-02",
            guardian_patient_id=mother["id"],
        )
        await http.post(
            f"{API}/patients/{mother['id']}/alerts",
            json={"kind": "condition", "description": "Diabetes"},
            headers=clinic.as_("dentist"),
        )
        await http.post(
            f"{API}/patients/{mother['id']}/consents",
            json={"kind": "data_processing", "granted": True},
            headers=clinic.as_("admin"),
        )
        response = await http.get(
            f"{API}/patients/{mother['id']}/export", headers=clinic.as_("admin")
        )
    assert response.status_code == 200, response.text
    assert (
        response.headers["content-disposition"]
        == f'attachment; filename="patient-{mother["number"]}.json"'
    )
    export = response.json()
    assert export["format"] == "dentalpin.patients.export/1"
    assert export["patient"]["given_name"] == "Marta" and "search" not in export["patient"]
    assert [a["description"] for a in export["alerts"]] == ["Diabetes"]
    assert [c["kind"] for c in export["consents"]] == ["data_processing"]
    assert export["wards"] == [child["id"]]


async def test_uninstall_is_refused_while_any_patient_record_exists(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-veto")
    # Without records the module comes and goes like any other.
    job = await run_job(
        platform, clinic.tenant, "lifecycle.uninstall", module="patients", cascade=True
    )
    assert job.state == "succeeded", job.error
    job = await run_job(platform, clinic.tenant, "lifecycle.restore", module="patients")
    assert job.state == "succeeded", job.error

    async with clinic.http() as http:
        patient = await register(http, clinic)
        await http.post(
            f"{API}/patients/{patient['id']}/archive",
            headers={**clinic.as_("admin"), "If-Match": '"1"'},
        )
    job = await run_job(
        platform, clinic.tenant, "lifecycle.uninstall", module="patients", cascade=True
    )
    assert job.state == "failed"
    assert "1 patient record(s) exist" in job.error and "five years" in job.error
    async with clinic.http() as http:
        kept = await http.get(f"{API}/patients/{patient['id']}", headers=clinic.as_("admin"))
    assert kept.status_code == 200 and kept.json()["archived_at"]
