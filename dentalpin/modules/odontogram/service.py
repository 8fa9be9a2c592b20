"""The odontogram's rules: recording entries in the append-only log, and deriving the
chart from it. Functions take the tenant session; nothing here knows about HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, exists, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from dentalpin.modules.catalog.models import items as catalog_items
from dentalpin.modules.patients.models import patients
from dentalpin.platform import (
    Conflict,
    EventContext,
    InvalidInput,
    NotFound,
    PageOf,
    fetch_page,
    sort_order,
)

from .fdi import (
    CONDITIONS,
    PATHOLOGIES,
    RESTORATIONS,
    check_condition,
    check_surfaces,
    check_tooth,
    dentition,
    surfaces_of,
)
from .models import entries
from .schemas import (
    ChartOut,
    EntryIn,
    EntryOut,
    PlanItemCompleted,
    ToothCondition,
    ToothOut,
    ToothTreatment,
)

CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future `occurred_at` may be (a client's clock running a little fast)."""
HISTORY_SORTS = {
    "seq": entries.c.seq,
    "occurred_at": entries.c.occurred_at,
    "recorded_at": entries.c.recorded_at,
    "tooth": entries.c.tooth,
}


async def ensure_patient(db: AsyncSession, patient_id: uuid.UUID) -> None:
    found = await db.scalar(select(exists().where(patients.c.id == patient_id)))
    if not found:
        raise NotFound(f"no patient {patient_id} in this clinic")


async def _ensure_catalog_item(db: AsyncSession, item_id: uuid.UUID) -> None:
    found = await db.scalar(select(exists().where(catalog_items.c.id == item_id)))
    if not found:
        raise InvalidInput(
            f"catalog item {item_id} does not exist: pick a treatment from the catalog"
        )


def _superseded_by() -> Any:
    later = aliased(entries)
    return (
        select(later.c.id)
        .where(later.c.supersedes_id == entries.c.id)
        .scalar_subquery()
        .label("superseded_by")
    )


def _entry_out(row: Row[Any]) -> EntryOut:
    return EntryOut.model_validate(dict(row._mapping))


async def get_entry(db: AsyncSession, patient_id: uuid.UUID, entry_id: uuid.UUID) -> EntryOut:
    row = (
        await db.execute(
            select(entries, _superseded_by()).where(
                entries.c.id == entry_id, entries.c.patient_id == patient_id
            )
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"patient {patient_id} has no chart entry {entry_id}")
    return _entry_out(row)


async def _lock_superseded(
    db: AsyncSession, patient_id: uuid.UUID, entry_id: uuid.UUID
) -> Row[Any]:
    """The entry a correction replaces, locked so two corrections cannot race."""
    row = (
        await db.execute(
            select(entries)
            .where(entries.c.id == entry_id, entries.c.patient_id == patient_id)
            .with_for_update()
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"patient {patient_id} has no chart entry {entry_id} to supersede")
    if row.kind == "void":
        raise Conflict(f"entry {entry_id} is a retraction and cannot be superseded")
    later = await db.scalar(select(entries.c.id).where(entries.c.supersedes_id == entry_id))
    if later is not None:
        raise Conflict(
            f"entry {entry_id} was already superseded by entry {later}: correct that one instead"
        )
    return row


def _occurred_at(value: datetime | None) -> datetime:
    now = datetime.now(UTC)
    if value is None:
        return now
    if value.tzinfo is None:
        raise InvalidInput("occurred_at needs a time zone, e.g. 2026-03-01T10:00:00+01:00")
    if value > now + CLOCK_SKEW:
        raise InvalidInput("occurred_at is in the future: chart what has happened")
    return value


async def _entry_values(
    db: AsyncSession, data: EntryIn, superseded: Row[Any] | None
) -> dict[str, Any]:
    """The checked columns of a new entry, or 422 saying what is wrong."""
    if data.kind == "void":
        if superseded is None:
            raise InvalidInput("a void entry retracts an entry: give its id in supersedes_id")
        if data.tooth is not None or data.surfaces or data.condition or data.catalog_item_id:
            raise InvalidInput("a void entry only names the entry it retracts (supersedes_id)")
        return {"tooth": superseded.tooth, "surfaces": [], "condition": None}
    if data.tooth is None:
        raise InvalidInput(f"a {data.kind} entry needs a tooth (FDI number)")
    tooth = check_tooth(data.tooth)
    surfaces = check_surfaces(tooth, data.surfaces)
    if data.kind == "condition":
        if data.condition is None:
            raise InvalidInput(f"say which condition: one of {', '.join(CONDITIONS)}")
        if data.catalog_item_id is not None:
            raise InvalidInput("a condition links no catalog item; record a treatment for that")
    else:
        if data.catalog_item_id is None:
            raise InvalidInput("a treatment needs the catalog item performed (catalog_item_id)")
        await _ensure_catalog_item(db, data.catalog_item_id)
    if data.condition is not None:
        check_condition(data.condition, tooth, surfaces)
    return {
        "tooth": tooth,
        "surfaces": surfaces,
        "condition": data.condition,
        "catalog_item_id": data.catalog_item_id,
    }


async def record_entry(
    db: AsyncSession,
    patient_id: uuid.UUID,
    data: EntryIn,
    recorded_by: uuid.UUID | None,
) -> EntryOut:
    """Append one entry to the patient's chart log (corrections supersede, never edit)."""
    await ensure_patient(db, patient_id)
    superseded = None
    if data.supersedes_id is not None:
        superseded = await _lock_superseded(db, patient_id, data.supersedes_id)
    values = await _entry_values(db, data, superseded)
    row = (
        await db.execute(
            entries.insert()
            .values(
                patient_id=patient_id,
                kind=data.kind,
                supersedes_id=data.supersedes_id,
                notes=data.notes,
                occurred_at=_occurred_at(data.occurred_at),
                recorded_by=recorded_by,
                **values,
            )
            .returning(*entries.c)
        )
    ).one()
    return EntryOut.model_validate({**row._mapping, "superseded_by": None})


async def on_item_completed(ctx: EventContext) -> None:
    """Subscriber of `treatment_plans.item_completed`: chart the item performed, one
    treatment entry per tooth (none for a whole-mouth item such as a cleaning). The
    platform's inbox runs this once per event, however often it is delivered."""
    if ctx.version != 1:
        raise ValueError(
            f"{ctx.name} version {ctx.version} is newer than this odontogram understands (1): "
            "upgrade the odontogram module, then replay the dead letter"
        )
    done = PlanItemCompleted.model_validate(ctx.payload)
    rows = []
    for tooth in done.teeth:
        chosen = check_surfaces(tooth, done.surfaces)
        if done.chart_condition is not None:
            check_condition(done.chart_condition, tooth, chosen)
        rows.append(
            {
                "patient_id": done.patient_id,
                "kind": "treatment",
                "tooth": tooth,
                "surfaces": chosen,
                "condition": done.chart_condition,
                "catalog_item_id": done.catalog_item_id,
                "source": "treatment_plan",
                "source_ref": done.item_id,
                "occurred_at": done.completed_at,
                "recorded_by": done.completed_by,
            }
        )
    if rows:
        await ctx.session.execute(entries.insert(), rows)


async def history(
    db: AsyncSession,
    patient_id: uuid.UUID,
    *,
    tooth: int | None = None,
    kind: str | None = None,
    include_superseded: bool = True,
    sort: str = "-seq",
    limit: int = 50,
    offset: int = 0,
) -> PageOf[EntryOut]:
    await ensure_patient(db, patient_id)
    query = select(entries, _superseded_by()).where(entries.c.patient_id == patient_id)
    if tooth is not None:
        query = query.where(entries.c.tooth == check_tooth(tooth))
    if kind is not None:
        query = query.where(entries.c.kind == kind)
    if not include_superseded:
        later = aliased(entries)
        query = query.where(~exists().where(later.c.supersedes_id == entries.c.id))
    query = query.order_by(*sort_order(sort, HISTORY_SORTS, entries.c.seq))
    return PageOf[EntryOut].of(await fetch_page(db, query, limit=limit, offset=offset))


async def chart(db: AsyncSession, patient_id: uuid.UUID, as_of: datetime | None = None) -> ChartOut:
    """The patient's current chart (or as it was recorded at `as_of`), derived from the log."""
    await ensure_patient(db, patient_id)
    query = select(entries).where(entries.c.patient_id == patient_id).order_by(entries.c.seq)
    if as_of is not None:
        if as_of.tzinfo is None:
            raise InvalidInput("as_of needs a time zone, e.g. 2026-03-01T10:00:00+01:00")
        query = query.where(entries.c.recorded_at <= as_of)
    rows = list(await db.execute(query))
    return ChartOut(
        patient_id=patient_id,
        as_of=as_of,
        last_seq=rows[-1].seq if rows else None,
        teeth=derive_chart(rows),
    )


# Deriving the chart -------------------------------------------------------------------------


@dataclass
class _Mark:
    """One condition on one tooth: on some surfaces, or on the whole tooth."""

    whole: bool = False
    surfaces: set[str] = field(default_factory=set)
    entry_ids: list[uuid.UUID] = field(default_factory=list)


@dataclass
class _Tooth:
    conditions: dict[str, _Mark] = field(default_factory=dict)
    treatments: list[ToothTreatment] = field(default_factory=list)

    def take_surfaces(self, names: Iterable[str], surfaces: set[str]) -> None:
        """Remove conditions `names` from `surfaces`; a condition left on none is gone."""
        for name in names:
            mark = self.conditions.get(name)
            if mark is None or mark.whole:
                continue
            mark.surfaces -= surfaces
            if not mark.surfaces:
                del self.conditions[name]

    def apply(self, condition: str, surfaces: set[str], entry_id: uuid.UUID, treated: bool) -> None:
        if condition == "missing":
            self.conditions = {}  # an absent tooth has no other condition
        elif condition == "implant":
            self.conditions.pop("missing", None)
            self.conditions.pop("extraction_indicated", None)
        if treated:
            if surfaces:
                self.take_surfaces(PATHOLOGIES, surfaces)
            else:
                for name in PATHOLOGIES:
                    self.conditions.pop(name, None)
        if condition in RESTORATIONS:
            self.take_surfaces(RESTORATIONS - {condition}, surfaces)
        mark = self.conditions.setdefault(condition, _Mark())
        mark.whole = mark.whole or not surfaces
        mark.surfaces |= surfaces
        mark.entry_ids.append(entry_id)


def derive_chart(rows: Sequence[Row[Any]]) -> list[ToothOut]:
    """Replay the log in order: superseded and void entries drop out; conditions found
    add to a tooth; a treatment resolves the pathologies of what it treated and leaves
    its own condition (a filling, a crown...); an extraction leaves the tooth missing."""
    superseded = {r.supersedes_id for r in rows if r.supersedes_id is not None}
    teeth: dict[int, _Tooth] = {}
    for row in rows:
        if row.id in superseded or row.kind == "void":
            continue
        tooth = teeth.setdefault(row.tooth, _Tooth())
        if row.kind == "treatment":
            tooth.treatments.append(
                ToothTreatment(
                    entry_id=row.id,
                    catalog_item_id=row.catalog_item_id,
                    surfaces=row.surfaces,
                    condition=row.condition,
                    occurred_at=row.occurred_at,
                )
            )
        if row.condition is not None:
            tooth.apply(row.condition, set(row.surfaces), row.id, row.kind == "treatment")
    return [_tooth_out(number, teeth[number]) for number in sorted(teeth)]


def _tooth_out(number: int, tooth: _Tooth) -> ToothOut:
    order = surfaces_of(number)
    conditions = [
        ToothCondition(
            condition=name,
            surfaces=[] if mark.whole else [s for s in order if s in mark.surfaces],
            entry_ids=mark.entry_ids,
        )
        for name, mark in sorted(tooth.conditions.items(), key=lambda c: CONDITIONS.index(c[0]))
    ]
    return ToothOut(
        tooth=number,
        dentition=dentition(number),
        missing="missing" in tooth.conditions,
        conditions=conditions,
        treatments=tooth.treatments,
    )
