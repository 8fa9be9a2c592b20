"""The odontogram over HTTP: entries in FDI notation, the chart derived from the append-only
log, corrections that supersede, permissions and tenant isolation."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.modules.odontogram.clinic import CHART, Clinic, make_clinic


@pytest.fixture
async def clinic(platform) -> Clinic:
    return await make_clinic(platform, modules=("odontogram",))


def tooth_of(chart: dict, number: int) -> dict:
    return next(t for t in chart["teeth"] if t["tooth"] == number)


def conditions(chart: dict, number: int) -> dict[str, list[str]]:
    return {c["condition"]: c["surfaces"] for c in tooth_of(chart, number)["conditions"]}


async def test_conditions_and_treatments_make_the_chart(clinic):
    async with clinic.http() as http:
        caries = await clinic.entry(
            http, kind="condition", tooth=36, surfaces=["M", "occlusal"], condition="caries"
        )
        assert caries.status_code == 201, caries.text
        assert caries.json()["surfaces"] == ["mesial", "occlusal"]
        await clinic.entry(http, kind="condition", tooth=11, condition="crown")
        await clinic.entry(http, kind="condition", tooth=48, condition="extraction_indicated")
        await clinic.entry(
            http, kind="condition", tooth=24, surfaces=["buccal"], condition="caries"
        )
        chart = (await http.get(f"{clinic.chart()}/chart", headers=clinic.as_("dentist"))).json()
        assert [t["tooth"] for t in chart["teeth"]] == [11, 24, 36, 48]
        assert conditions(chart, 36) == {"caries": ["mesial", "occlusal"]}
        assert conditions(chart, 24) == {"caries": ["vestibular"]}
        assert conditions(chart, 11) == {"crown": []}

        # A filling on the occlusal face resolves the caries there, not the mesial one.
        filled = await clinic.entry(
            http,
            kind="treatment",
            tooth=36,
            surfaces=["O"],
            condition="filling",
            catalog_item_id=clinic.treatments["filling"],
        )
        assert filled.status_code == 201, filled.text
        # Extracting 48 leaves it missing, whatever was there.
        await clinic.entry(
            http,
            kind="treatment",
            tooth=48,
            condition="missing",
            catalog_item_id=clinic.treatments["extraction"],
        )
        chart = (await http.get(f"{clinic.chart()}/chart", headers=clinic.as_("dentist"))).json()
        assert conditions(chart, 36) == {"caries": ["mesial"], "filling": ["occlusal"]}
        assert [t["catalog_item_id"] for t in tooth_of(chart, 36)["treatments"]] == [
            str(clinic.treatments["filling"])
        ]
        assert conditions(chart, 48) == {"missing": []}
        assert tooth_of(chart, 48)["missing"] is True
        assert chart["last_seq"] == filled.json()["seq"] + 1


async def test_deciduous_teeth_and_their_surfaces(clinic):
    async with clinic.http() as http:
        molar = await clinic.entry(
            http, kind="condition", tooth=75, surfaces=["occlusal", "L"], condition="caries"
        )
        assert molar.status_code == 201, molar.text
        assert molar.json()["surfaces"] == ["occlusal", "lingual"]
        incisor = await clinic.entry(
            http, kind="condition", tooth=51, surfaces=["incisal", "P"], condition="filling"
        )
        assert incisor.status_code == 201, incisor.text
        chart = (await http.get(f"{clinic.chart()}/chart", headers=clinic.as_("dentist"))).json()
        assert tooth_of(chart, 75)["dentition"] == "deciduous"
        assert conditions(chart, 51) == {"filling": ["incisal", "palatal"]}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"tooth": 19, "condition": "crown"}, "tooth 19 is not an FDI tooth number"),
        ({"tooth": 56, "condition": "crown"}, "tooth 56 is not an FDI tooth number"),
        ({"tooth": 9, "condition": "crown"}, "11-18, 21-28, 31-38, 41-48"),
        (
            {"tooth": 11, "surfaces": ["occlusal"], "condition": "caries"},
            "tooth 11 (incisor) has no occlusal surface",
        ),
        (
            {"tooth": 36, "surfaces": ["incisal"], "condition": "caries"},
            "tooth 36 (molar) has no incisal surface",
        ),
        (
            {"tooth": 36, "surfaces": ["palatal"], "condition": "caries"},
            "tooth 36 (molar) has no palatal surface",
        ),
        (
            {"tooth": 16, "surfaces": ["lingual"], "condition": "caries"},
            "tooth 16 (molar) has no lingual surface; its surfaces are mesial, distal, "
            "occlusal, vestibular, palatal",
        ),
        ({"tooth": 16, "surfaces": ["top"], "condition": "caries"}, "'top' is not a tooth surface"),
        ({"tooth": 16, "condition": "caries"}, "caries sits on tooth surfaces"),
        ({"tooth": 16, "surfaces": ["mesial"], "condition": "crown"}, "crown concerns the whole"),
        ({"tooth": 16}, "say which condition"),
        ({"condition": "crown"}, "needs a tooth"),
    ],
)
async def test_invalid_teeth_and_surfaces_are_refused_with_a_problem(clinic, body, needle):
    async with clinic.http() as http:
        response = await clinic.entry(http, kind="condition", **body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert needle in response.json()["detail"]
        history = await http.get(f"{clinic.chart()}/history", headers=clinic.as_("dentist"))
        assert history.json()["total"] == 0


async def test_treatments_need_an_existing_catalog_item(clinic):
    async with clinic.http() as http:
        missing = await clinic.entry(http, kind="treatment", tooth=36, condition="crown")
        assert missing.status_code == 422
        assert "catalog_item_id" in missing.json()["detail"]
        unknown = await clinic.entry(http, kind="treatment", tooth=36, catalog_item_id=uuid.uuid4())
        assert unknown.status_code == 422
        assert "does not exist" in unknown.json()["detail"]
        cond = await clinic.entry(
            http,
            kind="condition",
            tooth=36,
            condition="crown",
            catalog_item_id=clinic.treatments["crown"],
        )
        assert cond.status_code == 422


async def test_corrections_supersede_and_the_history_keeps_everything(clinic):
    async with clinic.http() as http:
        wrong = (
            await clinic.entry(
                http, kind="condition", tooth=26, surfaces=["distal"], condition="caries"
            )
        ).json()
        fixed = await clinic.entry(
            http,
            kind="condition",
            tooth=27,
            surfaces=["distal"],
            condition="caries",
            supersedes_id=wrong["id"],
            notes="charted on the wrong tooth",
        )
        assert fixed.status_code == 201, fixed.text
        chart = (await http.get(f"{clinic.chart()}/chart", headers=clinic.as_("dentist"))).json()
        assert [t["tooth"] for t in chart["teeth"]] == [27]

        again = await clinic.entry(
            http, kind="void", supersedes_id=wrong["id"]
        )  # already superseded
        assert again.status_code == 409
        assert fixed.json()["id"] in again.json()["detail"]

        void = await clinic.entry(http, kind="void", supersedes_id=fixed.json()["id"])
        assert void.status_code == 201, void.text
        assert void.json()["tooth"] == 27
        chart = (await http.get(f"{clinic.chart()}/chart", headers=clinic.as_("dentist"))).json()
        assert chart["teeth"] == []
        unvoid = await clinic.entry(http, kind="void", supersedes_id=void.json()["id"])
        assert unvoid.status_code == 409

        history = (
            await http.get(f"{clinic.chart()}/history?sort=seq", headers=clinic.as_("dentist"))
        ).json()
        assert history["total"] == 3
        assert [e["kind"] for e in history["items"]] == ["condition", "condition", "void"]
        assert history["items"][0]["superseded_by"] == fixed.json()["id"]
        assert history["items"][1]["superseded_by"] == void.json()["id"]
        assert history["items"][2]["superseded_by"] is None
        assert history["items"][0]["recorded_by"] == str(clinic.users["dentist"])

        current = (
            await http.get(
                f"{clinic.chart()}/history?include_superseded=false",
                headers=clinic.as_("dentist"),
            )
        ).json()
        assert [e["id"] for e in current["items"]] == [void.json()["id"]]

        # The chart as recorded before the retraction still shows tooth 27.
        then = fixed.json()["recorded_at"]
        past = await http.get(
            f"{clinic.chart()}/chart", params={"as_of": then}, headers=clinic.as_("dentist")
        )
        assert [t["tooth"] for t in past.json()["teeth"]] == [27]


async def test_void_needs_a_target_and_nothing_else(clinic):
    async with clinic.http() as http:
        entry = (await clinic.entry(http, kind="condition", tooth=11, condition="crown")).json()
        bare = await clinic.entry(http, kind="void")
        assert bare.status_code == 422 and "supersedes_id" in bare.json()["detail"]
        loaded = await clinic.entry(http, kind="void", supersedes_id=entry["id"], tooth=12)
        assert loaded.status_code == 422
        other = await clinic.entry(
            http, kind="void", supersedes_id=entry["id"], patient=clinic.other_patient
        )
        assert other.status_code == 404


async def test_history_pages_filters_and_sorts(clinic):
    async with clinic.http() as http:
        for tooth in (11, 12, 13, 14, 15):
            await clinic.entry(http, kind="condition", tooth=tooth, condition="crown")
        await clinic.entry(http, kind="condition", tooth=36, surfaces=["O"], condition="sealant")
        page = (
            await http.get(
                f"{clinic.chart()}/history",
                params={"limit": 2, "offset": 1, "sort": "-tooth"},
                headers=clinic.as_("hygienist"),
            )
        ).json()
        assert page["total"] == 6 and page["limit"] == 2 and page["offset"] == 1
        assert [e["tooth"] for e in page["items"]] == [15, 14]
        only = (
            await http.get(
                f"{clinic.chart()}/history", params={"tooth": 36}, headers=clinic.as_("dentist")
            )
        ).json()
        assert [e["condition"] for e in only["items"]] == ["sealant"]
        bad = await http.get(
            f"{clinic.chart()}/history", params={"sort": "notes"}, headers=clinic.as_("dentist")
        )
        assert bad.status_code == 422 and "Cannot sort by 'notes'" in bad.json()["detail"]


async def test_unknown_patient_is_404(clinic):
    async with clinic.http() as http:
        nobody = uuid.uuid4()
        for response in (
            await http.get(f"{clinic.chart(nobody)}/chart", headers=clinic.as_("dentist")),
            await clinic.entry(http, patient=nobody, kind="condition", tooth=11, condition="crown"),
        ):
            assert response.status_code == 404
            assert response.json()["type"].endswith("/not-found")


async def test_the_log_is_append_only_in_the_database(clinic, platform):
    async with clinic.http() as http:
        await clinic.entry(http, kind="condition", tooth=11, condition="crown")
    for statement in (
        "update odontogram_entries set tooth = 12",
        "delete from odontogram_entries",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with platform.db.tenant(clinic.tenant.scope) as s:
                await s.execute(text(statement))
    # Not even the schema's owner (migrations, operators) can rewrite the log.
    table = f'"{clinic.tenant.schema_name}".odontogram_entries'
    for statement in (
        f"update {table} set tooth = 12",
        f"delete from {table}",
        f"truncate {table}",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with platform.db.engine.begin() as conn:
                await conn.execute(text(statement))
    async with platform.db.tenant(clinic.tenant.scope) as s:
        assert await s.scalar(text("select tooth from odontogram_entries")) == 11
    # A correction can only supersede an entry of the same patient, whoever inserts it.
    with pytest.raises(DBAPIError, match="belongs to another patient"):
        async with platform.db.tenant(clinic.tenant.scope) as s:
            await s.execute(
                text(
                    "insert into odontogram_entries (patient_id, kind, tooth, supersedes_id) "
                    "select :other, 'void', tooth, id from odontogram_entries"
                ),
                {"other": clinic.other_patient},
            )


@pytest.mark.parametrize(
    ("role", "read", "write"),
    [
        ("admin", 200, 201),
        ("dentist", 200, 201),
        ("hygienist", 200, 201),
        ("assistant", 200, 403),
        ("receptionist", 403, 403),
        ("accountant", 403, 403),
    ],
)
async def test_only_clinical_roles_see_and_write_charts(clinic, role, read, write):
    async with clinic.http() as http:
        got = await http.get(f"{clinic.chart()}/chart", headers=clinic.as_(role))
        assert got.status_code == read
        history = await http.get(f"{clinic.chart()}/history", headers=clinic.as_(role))
        assert history.status_code == read
        notation = await http.get(f"{CHART}/notation", headers=clinic.as_(role))
        assert notation.status_code == read
        posted = await clinic.entry(http, role, kind="condition", tooth=11, condition="crown")
        assert posted.status_code == write


async def test_another_clinic_cannot_read_or_correct_a_chart(platform, clinic):
    other = await make_clinic(platform, "chart-b", modules=("odontogram",))
    async with clinic.http() as http:
        entry = (await clinic.entry(http, kind="condition", tooth=11, condition="crown")).json()
    async with other.http() as http:
        for url in (
            f"{clinic.chart()}/chart",
            f"{clinic.chart()}/history",
            f"{clinic.chart()}/entries/{entry['id']}",
        ):
            response = await http.get(url, headers=other.as_("dentist"))
            assert response.status_code == 404, url
        # Other's own patient cannot reach A's entry either.
        steal = await other.entry(http, kind="void", supersedes_id=entry["id"])
        assert steal.status_code == 404
        # A's token on B's host is refused.
        cross = await http.get(f"{other.chart()}/chart", headers=clinic.as_("dentist"))
        assert cross.status_code == 403
    async with clinic.http() as http:
        chart = (await http.get(f"{clinic.chart()}/chart", headers=clinic.as_("dentist"))).json()
        assert conditions(chart, 11) == {"crown": []}


async def test_notation_lists_every_fdi_tooth(clinic):
    async with clinic.http() as http:
        notation = (await http.get(f"{CHART}/notation", headers=clinic.as_("dentist"))).json()
    teeth = {t["tooth"]: t for t in notation["teeth"]}
    assert len(teeth) == 32 + 20
    assert teeth[11]["surfaces"] == ["mesial", "distal", "incisal", "vestibular", "palatal"]
    assert teeth[46]["surfaces"] == ["mesial", "distal", "occlusal", "vestibular", "lingual"]
    assert teeth[85]["dentition"] == "deciduous"
    assert "extraction_indicated" in notation["conditions"]
