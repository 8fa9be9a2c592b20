"""The chart's rules without a database: FDI notation, and how the log replays into a chart."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from dentalpin.modules.odontogram.fdi import (
    DECIDUOUS_TEETH,
    PERMANENT_TEETH,
    check_surfaces,
    check_tooth,
    surfaces_of,
)
from dentalpin.modules.odontogram.service import derive_chart
from dentalpin.platform import InvalidInput


def test_the_fdi_teeth():
    assert len(PERMANENT_TEETH) == 32 and len(DECIDUOUS_TEETH) == 20
    assert {11, 18, 21, 28, 31, 38, 41, 48, 51, 55, 61, 65, 71, 75, 81, 85} <= set(
        PERMANENT_TEETH + DECIDUOUS_TEETH
    )
    for bad in (0, 10, 19, 20, 29, 49, 50, 56, 66, 76, 86, 91, 111):
        with pytest.raises(InvalidInput):
            check_tooth(bad)


@pytest.mark.parametrize(
    ("tooth", "surfaces"),
    [
        (11, ("mesial", "distal", "incisal", "vestibular", "palatal")),
        (13, ("mesial", "distal", "incisal", "vestibular", "palatal")),
        (14, ("mesial", "distal", "occlusal", "vestibular", "palatal")),
        (33, ("mesial", "distal", "incisal", "vestibular", "lingual")),
        (47, ("mesial", "distal", "occlusal", "vestibular", "lingual")),
        (62, ("mesial", "distal", "incisal", "vestibular", "palatal")),
        (84, ("mesial", "distal", "occlusal", "vestibular", "lingual")),
    ],
)
def test_each_tooth_has_its_own_surfaces(tooth, surfaces):
    assert surfaces_of(tooth) == surfaces


def test_surface_names_are_canonical_and_in_charting_order():
    assert check_surfaces(46, ["B", "o", "Mesial", "mesial", "buccal"]) == [
        "mesial",
        "occlusal",
        "vestibular",
    ]
    assert check_surfaces(21, ["labial", "P", "I"]) == ["incisal", "vestibular", "palatal"]


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def log(*specs: tuple[Any, ...]) -> list[SimpleNamespace]:
    """Entries from (kind, tooth, condition, surfaces[, supersedes index])."""
    rows: list[SimpleNamespace] = []
    for seq, spec in enumerate(specs, start=1):
        kind, tooth, condition, surfaces, *target = spec
        rows.append(
            SimpleNamespace(
                id=uuid.uuid4(),
                seq=seq,
                kind=kind,
                tooth=tooth,
                condition=condition,
                surfaces=list(surfaces),
                catalog_item_id=uuid.uuid4() if kind == "treatment" else None,
                supersedes_id=rows[target[0]].id if target else None,
                occurred_at=T0,
            )
        )
    return rows


def chart(rows: list[SimpleNamespace]) -> dict[int, dict[str, list[str]]]:
    return {t.tooth: {c.condition: c.surfaces for c in t.conditions} for t in derive_chart(rows)}


def test_a_new_restoration_replaces_the_old_one_on_its_surfaces():
    rows = log(
        ("condition", 36, "filling", ["mesial", "occlusal"]),
        ("treatment", 36, "inlay", ["occlusal"]),
    )
    assert chart(rows) == {36: {"filling": ["mesial"], "inlay": ["occlusal"]}}


def test_a_whole_tooth_treatment_resolves_every_pathology_of_the_tooth():
    rows = log(
        ("condition", 16, "caries", ["mesial", "distal"]),
        ("condition", 16, "fracture", []),
        ("treatment", 16, "crown", []),
    )
    assert chart(rows) == {16: {"crown": []}}


def test_finding_a_condition_resolves_nothing():
    rows = log(("condition", 16, "caries", ["mesial"]), ("condition", 16, "filling", ["mesial"]))
    assert chart(rows) == {16: {"caries": ["mesial"], "filling": ["mesial"]}}


def test_extraction_then_implant():
    rows = log(
        ("condition", 46, "root_canal", []),
        ("condition", 46, "extraction_indicated", []),
        ("treatment", 46, "missing", []),
    )
    assert chart(rows) == {46: {"missing": []}}
    assert derive_chart(rows)[0].missing
    rows += log(("treatment", 46, "implant", []))
    rows[-1].seq = 4
    assert chart(rows) == {46: {"implant": []}}


def test_superseded_and_void_entries_drop_out():
    rows = log(
        ("condition", 26, "caries", ["distal"]),
        ("condition", 27, "caries", ["distal"], 0),  # wrong tooth: corrected
        ("condition", 11, "crown", []),
        ("void", 11, None, [], 2),  # never was a crown
    )
    assert chart(rows) == {27: {"caries": ["distal"]}}
    assert [c.entry_ids for c in derive_chart(rows)[0].conditions] == [[rows[1].id]]
