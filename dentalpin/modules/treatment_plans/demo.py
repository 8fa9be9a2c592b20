"""Demo data: treatment plans for some of the demo clinic's patients, at every step of the
flow (draft, proposed, accepted, in progress, completed, rejected), made through the
service so quotes, acceptances and completed items are exactly what the API would make.

Runs after the patients, catalog and odontogram demos (dependency order).
"""

from __future__ import annotations

import random
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dentalpin.modules.catalog.models import items as catalog_items
from dentalpin.modules.patients.models import patients
from dentalpin.platform import LifecycleContext

from . import service
from .schemas import AcceptIn, ItemIn, PlanIn

PLANS = 24
STAGES = ("draft", "proposed", "accepted", "in_progress", "completed", "rejected")
# What a plan offers: (catalog name pattern, teeth choices, surfaces, chart condition).
OFFERS: tuple[tuple[str, tuple[int, ...], list[str], str | None], ...] = (
    ("%obtura%", (16, 26, 36, 46, 15, 25, 35, 45), ["occlusal", "mesial"], "filling"),
    ("%endodon%", (16, 26, 36, 46), [], "root_canal"),
    ("%corona%", (16, 26, 36, 46, 11, 21), [], "crown"),
    ("%exodon%", (18, 28, 38, 48), [], "missing"),
    ("%implant%", (36, 46), [], "implant"),
    ("%limpieza%", (), [], None),
)
TITLES = (
    "Tratamiento conservador",
    "Rehabilitación sector posterior",
    "Saneamiento y prevención",
    "Plan de implantología",
)


async def _catalog(session: AsyncSession, pattern: str) -> uuid.UUID | None:
    found: uuid.UUID | None = await session.scalar(
        select(catalog_items.c.id)
        .where(catalog_items.c.active, catalog_items.c.name.ilike(pattern))
        # Of the demo catalog's variants, the last code fits these teeth (OBT2: two surfaces,
        # ENDO3: molars, EXOCIR: wisdom teeth, CORZR: a natural tooth's crown).
        .order_by(catalog_items.c.code.desc())
        .limit(1)
    )
    return found


async def _offers(session: AsyncSession) -> list[tuple[uuid.UUID, tuple[int, ...], list[str], Any]]:
    """The offers the demo catalog can price; any active item when it names none."""
    found = []
    for pattern, teeth, surfaces, condition in OFFERS:
        item = await _catalog(session, pattern)
        if item is not None:
            found.append((item, teeth, surfaces, condition))
    if not found:
        item = await _catalog(session, "%")
        if item is not None:
            found.append((item, (), [], None))
    return found


def _items(rng: random.Random, offers: list[Any]) -> list[ItemIn]:
    chosen = rng.sample(offers, min(len(offers), rng.randint(1, 3)))
    result = []
    for item, teeth, surfaces, condition in chosen:
        picked = sorted(rng.sample(teeth, rng.randint(1, min(2, len(teeth))))) if teeth else []
        result.append(
            ItemIn(
                catalog_item_id=item,
                teeth=picked,
                surfaces=surfaces if picked else [],
                chart_condition=condition if picked else None,
                discount_percent=Decimal(rng.choice((0, 0, 0, 5, 10))),
            )
        )
    return result


async def _advance(
    session: AsyncSession, plan_id: uuid.UUID, name: str, stage: str, rng: random.Random
) -> None:
    """Walk the plan along the status flow up to `stage`."""
    if stage == "draft":
        return
    await service.propose(session, plan_id, None, None)
    if stage == "proposed":
        return
    if stage == "rejected":
        await service.close(session, plan_id, "rejected", "Prefiere pensarlo")
        return
    method = rng.choice(("signature", "in_person", "email"))
    evidence = {"signature": "data:image/png;base64,iVBORw0KGgo=", "email": "<demo@clinic>"}
    await service.accept(
        session,
        plan_id,
        AcceptIn(method=method, accepted_by_name=name, evidence=evidence.get(method)),
        None,
    )
    plan = await service.get_plan(session, plan_id)
    done = {"accepted": 0, "in_progress": 1, "completed": len(plan.items)}[stage]
    for item in plan.items[:done]:
        await service.complete_item(session, plan_id, item.id, None, None)


async def demo(ctx: LifecycleContext) -> None:
    rng = random.Random(46)  # noqa: S311 - demo data, the same plans on every run
    offers = await _offers(ctx.session)
    if not offers:
        await ctx.log("treatment plans demo: the catalog is empty, no plans")
        return
    found = await ctx.session.execute(
        select(patients.c.id, patients.c.given_name, patients.c.family_name)
        .where(patients.c.archived_at.is_(None))
        .order_by(patients.c.number)
        .limit(PLANS * 5)
    )
    chosen = list(found)[1::5][:PLANS]
    for index, patient in enumerate(chosen):
        plan = await service.create_plan(
            ctx.session,
            PlanIn(
                patient_id=patient.id,
                title=rng.choice(TITLES),
                items=_items(rng, offers),
            ),
            None,
        )
        name = f"{patient.given_name} {patient.family_name}"
        await _advance(ctx.session, plan.id, name, STAGES[index % len(STAGES)], rng)
    await ctx.log(f"treatment plans demo: {len(chosen)} plans")
