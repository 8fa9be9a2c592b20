"""Demo data: charts for a share of the demo clinic's patients (what a first examination
finds: caries, old fillings, crowns, missing wisdom teeth), in one bulk insert.

Runs after the patients and catalog demos (dependency order) and uses their rows.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from dentalpin.modules.patients.models import patients
from dentalpin.platform import LifecycleContext

from .fdi import PERMANENT_TEETH, surfaces_of
from .models import entries

CHARTED_SHARE = 3
"""One patient in CHARTED_SHARE gets a chart."""
WISDOM = (18, 28, 38, 48)
CHILD_TEETH = (54, 55, 64, 65, 74, 75, 84, 85)


def _surfaces(rng: random.Random, tooth: int, most: int) -> list[str]:
    own = surfaces_of(tooth)
    chosen = set(rng.sample(own, rng.randint(1, most)))
    return [s for s in own if s in chosen]


def _chart(rng: random.Random, patient: Any, today: date) -> list[dict[str, Any]]:
    """The entries of one examination, a few months ago."""
    when = datetime.combine(today - timedelta(days=rng.randint(20, 400)), datetime.min.time())
    when = when.replace(hour=rng.randint(9, 19), tzinfo=UTC)
    child = patient.birth_date is not None and (today - patient.birth_date).days < 11 * 365
    rows: list[dict[str, Any]] = []

    def add(tooth: int, condition: str, surfaces: list[str] | None = None) -> None:
        rows.append(
            {
                "id": uuid.uuid4(),
                "patient_id": patient.id,
                "kind": "condition",
                "tooth": tooth,
                "surfaces": surfaces or [],
                "condition": condition,
                "occurred_at": when,
                "recorded_at": when,
            }
        )

    teeth = CHILD_TEETH if child else tuple(t for t in PERMANENT_TEETH if t not in WISDOM)
    for tooth in rng.sample(teeth, rng.randint(1, 3)):
        add(tooth, "caries", _surfaces(rng, tooth, 2))
    if child:
        for tooth in rng.sample((16, 26, 36, 46), rng.randint(0, 2)):
            add(tooth, "sealant", ["occlusal"])
        return rows
    for tooth in rng.sample(teeth, rng.randint(0, 4)):
        add(tooth, "filling", _surfaces(rng, tooth, 3))
    if rng.random() < 0.25:
        add(rng.choice((16, 26, 36, 46, 11, 21)), "crown")
    if rng.random() < 0.15:
        add(rng.choice((17, 27, 37, 47)), "root_canal")
    for tooth in rng.sample(WISDOM, rng.randint(0, 4)):
        add(tooth, "missing")
    if rng.random() < 0.1:
        add(rng.choice(WISDOM), "extraction_indicated")
    return rows


async def demo(ctx: LifecycleContext) -> None:
    rng = random.Random(36)  # noqa: S311 - demo data, the same charts on every run
    today = datetime.now(UTC).date()
    found = await ctx.session.execute(
        select(patients.c.id, patients.c.birth_date)
        .where(patients.c.archived_at.is_(None))
        .order_by(patients.c.number)
    )
    rows: list[dict[str, Any]] = []
    for index, patient in enumerate(found):
        if index % CHARTED_SHARE == 0:
            rows += _chart(rng, patient, today)
    rows.sort(key=lambda r: r["occurred_at"])  # the log's order is the order of the visits
    if rows:
        await ctx.session.execute(insert(entries), rows)
    await ctx.log(f"odontogram demo: {len(rows)} chart entries")
