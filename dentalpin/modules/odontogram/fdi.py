"""FDI (ISO 3950) tooth notation: which teeth exist, which surfaces each has, and the
conditions a chart records. Treatment plans validate teeth and surfaces with these too."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from dentalpin.platform import InvalidInput

Dentition = Literal["permanent", "deciduous"]

PERMANENT_QUADRANTS = (1, 2, 3, 4)
DECIDUOUS_QUADRANTS = (5, 6, 7, 8)
UPPER_QUADRANTS = frozenset({1, 2, 5, 6})

PERMANENT_TEETH = tuple(q * 10 + p for q in PERMANENT_QUADRANTS for p in range(1, 9))
DECIDUOUS_TEETH = tuple(q * 10 + p for q in DECIDUOUS_QUADRANTS for p in range(1, 6))
TEETH = frozenset(PERMANENT_TEETH + DECIDUOUS_TEETH)

SURFACES = ("mesial", "distal", "occlusal", "incisal", "vestibular", "lingual", "palatal")
SURFACE_ALIASES = {
    "buccal": "vestibular",
    "labial": "vestibular",
    "m": "mesial",
    "d": "distal",
    "o": "occlusal",
    "i": "incisal",
    "v": "vestibular",
    "b": "vestibular",
    "l": "lingual",
    "p": "palatal",
}
"""Other names clinicians use; stored under the canonical name."""

Condition = Literal[
    "caries",
    "filling",
    "inlay",
    "sealant",
    "fracture",
    "wear",
    "crown",
    "veneer",
    "bridge",
    "root_canal",
    "implant",
    "missing",
    "impacted",
    "extraction_indicated",
]
CONDITIONS: tuple[str, ...] = get_args(Condition)
SURFACE_CONDITIONS = frozenset({"caries", "filling", "inlay", "sealant"})
"""Conditions that sit on named surfaces: at least one is required."""
WHOLE_TOOTH_CONDITIONS = frozenset(
    {"crown", "veneer", "bridge", "root_canal", "implant", "missing", "impacted"}
    | {"extraction_indicated"}
)
"""Conditions of the whole tooth: surfaces are refused."""
PATHOLOGIES = frozenset({"caries", "fracture", "wear"})
"""What a treatment resolves on the surfaces (or the whole tooth) it treats."""
RESTORATIONS = frozenset({"filling", "inlay", "sealant"})
"""One restoration per surface: a new one replaces the old one there."""

TEETH_HELP = (
    "FDI permanent teeth are 11-18, 21-28, 31-38, 41-48; deciduous teeth are 51-55, 61-65, "
    "71-75, 81-85"
)


def dentition(tooth: int) -> Dentition:
    return "permanent" if tooth // 10 in PERMANENT_QUADRANTS else "deciduous"


def is_anterior(tooth: int) -> bool:
    """Incisors and canines (positions 1-3) have an incisal edge, not an occlusal face."""
    return tooth % 10 <= 3


def surfaces_of(tooth: int) -> tuple[str, ...]:
    """The surfaces this tooth has, in charting order."""
    biting = "incisal" if is_anterior(tooth) else "occlusal"
    inner = "palatal" if tooth // 10 in UPPER_QUADRANTS else "lingual"
    return ("mesial", "distal", biting, "vestibular", inner)


def check_tooth(tooth: int) -> int:
    if tooth not in TEETH:
        raise InvalidInput(f"tooth {tooth} is not an FDI tooth number: {TEETH_HELP}")
    return tooth


def _kind_of(tooth: int) -> str:
    position = tooth % 10
    names = {1: "incisor", 2: "incisor", 3: "canine"}
    if dentition(tooth) == "deciduous":
        return names.get(position, "molar")
    return names.get(position, "premolar" if position in (4, 5) else "molar")


def check_surfaces(tooth: int, surfaces: Iterable[str]) -> list[str]:
    """Canonical, de-duplicated surfaces of `tooth` in charting order; 422 for a surface
    the tooth does not have."""
    check_tooth(tooth)
    own = surfaces_of(tooth)
    chosen: set[str] = set()
    for raw in surfaces:
        name = raw.strip().lower()
        name = SURFACE_ALIASES.get(name, name)
        if name not in SURFACES:
            raise InvalidInput(
                f"'{raw}' is not a tooth surface: use one of {', '.join(SURFACES)} "
                "(buccal and labial mean vestibular)"
            )
        if name not in own:
            raise InvalidInput(
                f"tooth {tooth} ({_kind_of(tooth)}) has no {name} surface; its surfaces are "
                f"{', '.join(own)}"
            )
        chosen.add(name)
    return [s for s in own if s in chosen]


def check_condition(condition: str, tooth: int, surfaces: list[str]) -> None:
    """A condition's surfaces must suit it: some sit on surfaces, some on the whole tooth."""
    if condition in SURFACE_CONDITIONS and not surfaces:
        raise InvalidInput(
            f"{condition} sits on tooth surfaces: say which of {', '.join(surfaces_of(tooth))}"
        )
    if condition in WHOLE_TOOTH_CONDITIONS and surfaces:
        raise InvalidInput(f"{condition} concerns the whole tooth: send no surfaces")
