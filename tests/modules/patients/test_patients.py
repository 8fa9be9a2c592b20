"""patients: registration with Spanish documents checked, guardians for minors, archive
instead of delete, optimistic concurrency, events, roles, tenant isolation."""

from __future__ import annotations

from datetime import date

from sqlalchemy import text

from tests.modules.members import if_match, open_clinic, problem

API = "/api/v1/patients"
ADULT = {"given_name": "José", "family_name": "Núñez Pérez", "birth_date": "1980-05-02"}


def years_ago(years: int) -> str:
    today = date.today()
    return today.replace(year=today.year - years).isoformat()


async def outbox(clinic, patient_id: str) -> list[tuple[str, dict]]:
    async with clinic.platform.db.tenant(clinic.tenant.scope) as s:
        rows = await s.execute(
            text(
                "select name, payload from _outbox where payload->>'patient_id' = :p order by seq"
            ),
            {"p": patient_id},
        )
        return [(r.name, r.payload) for r in rows]


async def test_registration_checks_dni_and_nie_and_keeps_passports_free_form(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-docs")
    desk = clinic.as_("receptionist")
    async with clinic.http() as http:
        created = await http.post(
            f"{API}/patients",
            json={
                **ADULT,
                "document_type": "dni",
                "document_number": "12345678-z",
                "phone": "+34 600 11 22 33",
            },
            headers=desk,
        )
        assert created.status_code == 201, created.text
        patient = created.json()
        assert patient["document_number"] == "12345678Z" and patient["number"] >= 1
        assert patient["age"] is not None and patient["is_minor"] is False
        assert patient["alerts"] == {"count": 0, "highest_severity": None, "items": None}

        wrong = await http.post(
            f"{API}/patients",
            json={**ADULT, "document_type": "dni", "document_number": "12345678A"},
            headers=desk,
        )
        assert (
            "check letter" in problem(wrong, 422)["detail"]
            and "expected Z" in wrong.json()["detail"]
        )
        short = await http.post(
            f"{API}/patients",
            json={**ADULT, "document_type": "dni", "document_number": "1234"},
            headers=desk,
        )
        assert "8 digits and a letter" in problem(short, 422)["detail"]
        nie = await http.post(
            f"{API}/patients",
            json={
                "given_name": "Ana",
                "family_name": "Silva",
                "document_type": "nie",
                "document_number": "x1234567l",
            },
            headers=desk,
        )
        assert nie.status_code == 201 and nie.json()["document_number"] == "X1234567L"
        bad_nie = await http.post(
            f"{API}/patients",
            json={
                "given_name": "Ana",
                "family_name": "Silva",
                "document_type": "nie",
                "document_number": "X1234567A",
            },
            headers=desk,
        )
        problem(bad_nie, 422)
        passport = await http.post(
            f"{API}/patients",
            json={
                "given_name": "John",
                "family_name": "Smith",
                "document_type": "passport",
                "document_number": "ab 123456",
            },
            headers=desk,
        )
        assert passport.status_code == 201 and passport.json()["document_number"] == "AB 123456"
        half = await http.post(
            f"{API}/patients", json={**ADULT, "document_type": "dni"}, headers=desk
        )
        assert "go together" in problem(half, 422)["detail"]
        twice = await http.post(
            f"{API}/patients",
            json={**ADULT, "document_type": "dni", "document_number": "12345678Z"},
            headers=desk,
        )
        assert "already has DNI 12345678Z" in problem(twice, 409)["detail"]


async def test_a_minor_needs_an_adult_guardian(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-minor")
    desk = clinic.as_("receptionist")
    async with clinic.http() as http:
        child = {"given_name": "Lucas", "family_name": "García", "birth_date": years_ago(7)}
        alone = await http.post(f"{API}/patients", json=child, headers=desk)
        assert "guardian_patient_id" in problem(alone, 422)["detail"]
        sibling = await http.post(
            f"{API}/patients",
            json={
                "given_name": "Sara",
                "family_name": "García",
                "birth_date": years_ago(12),
                "guardian_patient_id": None,
            },
            headers=desk,
        )
        problem(sibling, 422)
        mother = (
            await http.post(
                f"{API}/patients",
                json={"given_name": "Marta", "family_name": "García", "birth_date": "1985-01-01"},
                headers=desk,
            )
        ).json()
        created = await http.post(
            f"{API}/patients",
            json={**child, "guardian_patient_id": mother["id"], "guardian_relationship": "madre"},
            headers=desk,
        )
        assert created.status_code == 201, created.text
        assert created.json()["is_minor"] is True and created.json()["age"] == 7
        # A minor cannot be a guardian; nor can the guardian be dropped while the patient is a minor.
        minor_guardian = await http.post(
            f"{API}/patients",
            json={**child, "given_name": "Leo", "guardian_patient_id": created.json()["id"]},
            headers=desk,
        )
        assert "must be an adult" in problem(minor_guardian, 422)["detail"]
        dropped = await http.patch(
            f"{API}/patients/{created.json()['id']}",
            json={"guardian_patient_id": None},
            headers={**desk, **if_match(created)},
        )
        problem(dropped, 422)
        future = await http.post(
            f"{API}/patients", json={**ADULT, "birth_date": "2999-01-01"}, headers=desk
        )
        assert "future" in problem(future, 422)["detail"]


async def test_edits_need_the_current_version_and_publish_what_changed(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-edit")
    desk = clinic.as_("receptionist")
    async with clinic.http() as http:
        created = await http.post(f"{API}/patients", json=ADULT, headers=desk)
        url = f"{API}/patients/{created.json()['id']}"
        problem(await http.patch(url, json={"phone": "600000000"}, headers=desk), 428)
        garbled = await http.patch(
            url, json={"phone": "600000000"}, headers={**desk, "If-Match": "three"}
        )
        problem(garbled, 422)
        edited = await http.patch(
            url,
            json={"phone": "600 000 000", "email": "jose@example.es"},
            headers={**desk, **if_match(created)},
        )
        assert edited.status_code == 200, edited.text
        assert edited.json()["version"] == 2 and edited.headers["ETag"] == '"2"'
        stale = await http.patch(
            url, json={"phone": "611111111"}, headers={**desk, **if_match(created)}
        )
        assert "version 1, now 2" in problem(stale, 412)["detail"]
        problem(
            await http.patch(url, json={"given_name": None}, headers={**desk, **if_match(edited)}),
            422,
        )
        problem(
            await http.patch(
                url, json={"favourite_colour": "blue"}, headers={**desk, **if_match(edited)}
            ),
            422,
        )

        # Archiving needs patients.patient.archive: the front desk cannot, an admin can.
        problem(await http.post(f"{url}/archive", headers={**desk, **if_match(edited)}), 403)
        archived = await http.post(
            f"{url}/archive", headers={**clinic.as_("admin"), **if_match(edited)}
        )
        assert archived.status_code == 200 and archived.json()["archived_at"]
        problem(
            await http.post(
                f"{url}/archive", headers={**clinic.as_("admin"), **if_match(archived)}
            ),
            409,
        )
        assert (await http.get(f"{API}/patients", headers=desk)).json()["total"] == 0
        shelved = (await http.get(f"{API}/patients?archived=true", headers=desk)).json()
        assert [p["id"] for p in shelved["items"]] == [created.json()["id"]]
        assert (await http.get(url, headers=desk)).status_code == 200  # still readable
        back = await http.post(
            f"{url}/unarchive", headers={**clinic.as_("admin"), **if_match(archived)}
        )
        assert back.json()["archived_at"] is None
        problem(await http.delete(url, headers=clinic.as_("admin")), 405)

    events = await outbox(clinic, created.json()["id"])
    assert [name for name, _ in events] == [
        "patients.patient_created",
        "patients.patient_updated",
        "patients.patient_archived",
        "patients.patient_updated",
    ]
    assert events[0][1]["number"] == created.json()["number"]
    assert events[1][1]["fields"] == ["email", "phone"]
    assert events[3][1]["fields"] == ["archived_at"]
    assert "Núñez" not in str(events)  # ids and field names only, no personal data


async def test_refused_changes_publish_nothing(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-noevt")
    async with clinic.http() as http:
        created = await http.post(f"{API}/patients", json=ADULT, headers=clinic.as_("admin"))
        await http.patch(
            f"{API}/patients/{created.json()['id']}",
            json={"document_type": "dni", "document_number": "00000000A"},
            headers={**clinic.as_("admin"), **if_match(created)},
        )
    assert [n for n, _ in await outbox(clinic, created.json()["id"])] == [
        "patients.patient_created"
    ]


async def test_roles_who_may_see_and_change_patients(platform):
    clinic = await open_clinic(platform, ["patients"], "pat-roles")
    async with clinic.http() as http:
        created = await http.post(f"{API}/patients", json=ADULT, headers=clinic.as_("receptionist"))
        assert created.status_code == 201
        url = f"{API}/patients/{created.json()['id']}"
        for role in ("dentist", "hygienist", "assistant", "receptionist", "admin"):
            assert (await http.get(url, headers=clinic.as_(role))).status_code == 200, role
        # Accountants read billing and prices, not patient records.
        problem(await http.get(url, headers=clinic.as_("accountant")), 403)
        problem(await http.get(f"{API}/patients", headers=clinic.as_("accountant")), 403)
        problem(
            await http.post(f"{API}/patients", json=ADULT, headers=clinic.as_("accountant")), 403
        )
        problem(await http.get(f"{url}/export", headers=clinic.as_("receptionist")), 403)
        assert (await http.get(url)).status_code == 401


async def test_another_clinic_cannot_read_or_change_our_patients(platform):
    ours = await open_clinic(platform, ["patients"], "pat-iso-a")
    theirs = await open_clinic(platform, ["patients"], "pat-iso-b")
    async with ours.http() as http:
        created = await http.post(f"{API}/patients", json=ADULT, headers=ours.as_("admin"))
        pid = created.json()["id"]
        await http.post(
            f"{API}/patients/{pid}/alerts",
            json={"kind": "allergy", "description": "Penicilina"},
            headers=ours.as_("admin"),
        )
    async with theirs.http() as http:
        admin = theirs.as_("admin")
        for method, path, body in (
            ("GET", f"/patients/{pid}", None),
            ("PATCH", f"/patients/{pid}", {"given_name": "Mine"}),
            ("POST", f"/patients/{pid}/archive", None),
            ("GET", f"/patients/{pid}/export", None),
            ("GET", f"/patients/{pid}/alerts", None),
            ("POST", f"/patients/{pid}/alerts", {"kind": "allergy", "description": "x"}),
            ("GET", f"/patients/{pid}/consents", None),
            ("POST", f"/patients/{pid}/consents", {"kind": "communications", "granted": True}),
        ):
            response = await http.request(
                method, API + path, json=body, headers={**admin, "If-Match": '"1"'}
            )
            problem(response, 404)
        assert (await http.get(f"{API}/patients?q=nunez", headers=admin)).json()["total"] == 0
    async with ours.http() as http:
        again = (await http.get(f"{API}/patients/{pid}", headers=ours.as_("admin"))).json()
    assert again["given_name"] == "José" and again["version"] == 1 and again["alerts"]["count"] == 1
