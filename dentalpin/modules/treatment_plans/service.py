"""The rules of treatment plans: items priced from the catalog, the status flow, quotes
snapshotted at each proposal, acceptance, and completing items (charted on the
odontogram through the `treatment_plans.item_completed` event)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Select, Subquery, func, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from dentalpin.modules.catalog.models import items as catalog_items
from dentalpin.modules.odontogram.fdi import check_condition, check_surfaces, check_tooth
from dentalpin.modules.odontogram.service import ensure_patient
from dentalpin.platform import (
    Conflict,
    InvalidInput,
    NotFound,
    PageOf,
    PreconditionFailed,
    fetch_page,
    publish,
    sort_order,
    update_versioned,
)

from .events import ItemCompleted, PlanStatusChanged, QuoteIssued
from .models import acceptances, items, plans, quotes
from .schemas import (
    AcceptanceOut,
    AcceptIn,
    ItemIn,
    ItemOut,
    ItemPatch,
    PlanIn,
    PlanOut,
    PlanPatch,
    PlanSummary,
    QuoteLine,
    QuoteOut,
    QuoteRef,
)

TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"proposed", "cancelled"}),
    "proposed": frozenset({"accepted", "rejected", "draft", "cancelled"}),
    "accepted": frozenset({"in_progress", "cancelled"}),
    "in_progress": frozenset({"completed", "cancelled"}),
    "completed": frozenset(),
    "rejected": frozenset(),
    "cancelled": frozenset(),
}
"""The status flow; `proposed -> draft` reopens a plan for revision (the next proposal
issues a new quote version)."""
CLOCK_SKEW = timedelta(minutes=5)
PLAN_SORTS: dict[str, ColumnElement[Any]] = {
    "created_at": plans.c.created_at,
    "updated_at": plans.c.updated_at,
    "status": plans.c.status,
    "title": plans.c.title,
}
QUOTE_SORTS: dict[str, ColumnElement[Any]] = {
    "created_at": quotes.c.created_at,
    "number": quotes.c.number,
    "total": quotes.c.total,
}

# Money is computed by the database, in one place: a line's gross, its discount rounded
# to the cent (half away from zero), and what the patient pays for it.
GROSS = items.c.quantity * items.c.unit_price
LINE_DISCOUNT = func.round(GROSS * items.c.discount_percent / 100, 2)
LINE_TOTAL = (GROSS - LINE_DISCOUNT).label("line_total")
ZERO = Decimal("0.00")


def _totals() -> Subquery:
    """Per plan: items that still count (not cancelled) and their sums."""
    counted = items.c.status != "cancelled"
    return (
        select(
            items.c.plan_id,
            func.count().filter(counted).label("item_count"),
            func.coalesce(func.sum(GROSS).filter(counted), ZERO).label("subtotal"),
            func.coalesce(func.sum(LINE_DISCOUNT).filter(counted), ZERO).label("discount"),
        )
        .group_by(items.c.plan_id)
        .subquery()
    )


def _summaries() -> Select[Any]:
    totals = _totals()
    subtotal = func.coalesce(totals.c.subtotal, ZERO)
    discount = func.coalesce(totals.c.discount, ZERO)
    return select(
        plans,
        func.coalesce(totals.c.item_count, 0).label("item_count"),
        subtotal.label("subtotal"),
        discount.label("discount"),
        (subtotal - discount).label("total"),
    ).select_from(plans.outerjoin(totals, totals.c.plan_id == plans.c.id))


def _now_or(value: datetime | None, what: str) -> datetime:
    now = datetime.now(UTC)
    if value is None:
        return now
    if value.tzinfo is None:
        raise InvalidInput(f"{what} needs a time zone, e.g. 2026-03-01T10:00:00+01:00")
    if value > now + CLOCK_SKEW:
        raise InvalidInput(f"{what} is in the future")
    return value


# Reading -----------------------------------------------------------------------------------


async def _summary_row(db: AsyncSession, plan_id: uuid.UUID) -> RowMapping:
    row: RowMapping | None = (
        (await db.execute(_summaries().where(plans.c.id == plan_id))).mappings().one_or_none()
    )
    if row is None:
        raise NotFound(f"no treatment plan {plan_id} in this clinic")
    return row


async def get_summary(db: AsyncSession, plan_id: uuid.UUID) -> PlanSummary:
    return PlanSummary.model_validate(dict(await _summary_row(db, plan_id)))


async def list_plans(
    db: AsyncSession,
    *,
    patient_id: uuid.UUID | None,
    statuses: Sequence[str],
    sort: str,
    limit: int,
    offset: int,
) -> PageOf[PlanSummary]:
    query = _summaries()
    if patient_id is not None:
        query = query.where(plans.c.patient_id == patient_id)
    if statuses:
        query = query.where(plans.c.status.in_(statuses))
    query = query.order_by(*sort_order(sort, PLAN_SORTS, plans.c.id))
    return PageOf[PlanSummary].of(await fetch_page(db, query, limit=limit, offset=offset))


async def _items_of(db: AsyncSession, plan_id: uuid.UUID) -> list[ItemOut]:
    rows = await db.execute(
        select(items, LINE_TOTAL)
        .where(items.c.plan_id == plan_id)
        .order_by(items.c.position, items.c.created_at, items.c.id)
    )
    return [ItemOut.model_validate(dict(r)) for r in rows.mappings()]


async def get_plan(db: AsyncSession, plan_id: uuid.UUID) -> PlanOut:
    summary = await _summary_row(db, plan_id)
    quote_rows = await db.execute(
        select(quotes.c.id, quotes.c.number, quotes.c.total, quotes.c.created_at)
        .where(quotes.c.plan_id == plan_id)
        .order_by(quotes.c.number)
    )
    acceptance = (
        (await db.execute(select(acceptances).where(acceptances.c.plan_id == plan_id)))
        .mappings()
        .one_or_none()
    )
    return PlanOut.model_validate(
        {
            **summary,
            "items": await _items_of(db, plan_id),
            "quotes": [QuoteRef.model_validate(dict(q)) for q in quote_rows.mappings()],
            "acceptance": None if acceptance is None else AcceptanceOut.model_validate(acceptance),
        }
    )


def quote_out(row: RowMapping, *, clinical: bool) -> QuoteOut:
    """A quote from its snapshot; readers without clinical access get no teeth/surfaces."""
    snapshot = row["snapshot"]
    lines = [
        QuoteLine.model_validate(line if clinical else {**line, "teeth": None, "surfaces": None})
        for line in snapshot["lines"]
    ]
    return QuoteOut(
        id=row["id"],
        plan_id=row["plan_id"],
        patient_id=snapshot["patient_id"],
        number=row["number"],
        title=snapshot["title"],
        lines=lines,
        subtotal=row["subtotal"],
        discount=row["discount"],
        total=row["total"],
        valid_until=row["valid_until"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        accepted=bool(row["accepted"]),
    )


def _quotes_query() -> Select[Any]:
    accepted = (
        select(acceptances.c.id).where(acceptances.c.quote_id == quotes.c.id).exists()
    ).label("accepted")
    return select(quotes, accepted).join(plans, plans.c.id == quotes.c.plan_id)


async def list_quotes(
    db: AsyncSession,
    *,
    plan_id: uuid.UUID | None,
    patient_id: uuid.UUID | None,
    created_from: date | None,
    created_to: date | None,
    sort: str,
    limit: int,
    offset: int,
    clinical: bool,
) -> PageOf[QuoteOut]:
    query = _quotes_query()
    if plan_id is not None:
        await _summary_row(db, plan_id)
        query = query.where(quotes.c.plan_id == plan_id)
    if patient_id is not None:
        query = query.where(plans.c.patient_id == patient_id)
    if created_from is not None:
        query = query.where(quotes.c.created_at >= created_from)
    if created_to is not None:
        query = query.where(quotes.c.created_at < created_to + timedelta(days=1))
    page = await fetch_page(
        db, query.order_by(*sort_order(sort, QUOTE_SORTS, quotes.c.id)), limit=limit, offset=offset
    )
    return PageOf[QuoteOut](
        items=[quote_out(r, clinical=clinical) for r in page.items],
        total=page.total,
        limit=page.limit,
        offset=page.offset,
    )


async def get_quote(db: AsyncSession, quote_id: uuid.UUID, *, clinical: bool) -> QuoteOut:
    row = (
        (await db.execute(_quotes_query().where(quotes.c.id == quote_id))).mappings().one_or_none()
    )
    if row is None:
        raise NotFound(f"no quote {quote_id} in this clinic")
    return quote_out(row, clinical=clinical)


# Writing: plans and items ------------------------------------------------------------------


async def _lock_plan(db: AsyncSession, plan_id: uuid.UUID) -> RowMapping:
    """The plan row, locked: status changes and item edits of one plan run one at a time."""
    row = (
        (await db.execute(select(plans).where(plans.c.id == plan_id).with_for_update()))
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound(f"no treatment plan {plan_id} in this clinic")
    return row


def _require_status(plan: RowMapping, allowed: set[str], doing: str) -> None:
    if plan["status"] not in allowed:
        hint = ""
        if plan["status"] == "proposed" and "draft" in allowed:
            hint = " Revise it first (POST .../revise) to change it, then propose it again."
        raise Conflict(
            f"cannot {doing}: the plan is {plan['status']} (allowed when "
            f"{' or '.join(sorted(allowed))}).{hint}"
        )


def _check_transition(plan: RowMapping, to: str) -> None:
    allowed = TRANSITIONS[plan["status"]]
    if to not in allowed:
        choices = ", ".join(sorted(allowed)) or "nothing: it is closed"
        raise Conflict(
            f"a {plan['status']} plan cannot become {to}; from {plan['status']} it can go to "
            f"{choices}"
        )


async def _touch_plan(db: AsyncSession, plan_id: uuid.UUID, **values: Any) -> None:
    """A change to a plan's items or status is a change of the plan: bump its version."""
    await db.execute(
        update(plans)
        .where(plans.c.id == plan_id)
        .values(**values, version=plans.c.version + 1, updated_at=func.now())
    )


async def _move(db: AsyncSession, plan: RowMapping, to: str, **values: Any) -> None:
    """Change the plan's status (already checked against the flow) and say so."""
    await _touch_plan(db, plan["id"], status=to, **values)
    await _announce(db, plan, plan["status"], to)


async def _announce(db: AsyncSession, plan: RowMapping, before: str, to: str) -> None:
    await publish(
        db,
        PlanStatusChanged(
            plan_id=plan["id"], patient_id=plan["patient_id"], from_status=before, to_status=to
        ),
    )


def _check_chart_fields(
    teeth: Sequence[int], surfaces: Sequence[str], condition: str | None
) -> tuple[list[int], list[str]]:
    """Teeth and surfaces in FDI notation (the odontogram's own rules), de-duplicated."""
    if surfaces and not teeth:
        raise InvalidInput("surfaces need the teeth they are on")
    chosen = sorted({check_tooth(t) for t in teeth})
    canonical: list[str] = []
    for tooth in chosen:
        canonical = check_surfaces(tooth, surfaces)
        if condition is not None:
            check_condition(condition, tooth, canonical)
    if condition is not None and not chosen:
        raise InvalidInput("a chart condition needs the teeth it will be charted on")
    return chosen, canonical


async def _catalog_item(db: AsyncSession, item_id: uuid.UUID) -> RowMapping:
    row = (
        (
            await db.execute(
                select(
                    catalog_items.c.name, catalog_items.c.default_price, catalog_items.c.active
                ).where(catalog_items.c.id == item_id)
            )
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise InvalidInput(f"catalog item {item_id} does not exist: pick one from the catalog")
    return row


async def _insert_item(db: AsyncSession, plan_id: uuid.UUID, data: ItemIn) -> uuid.UUID:
    catalog = await _catalog_item(db, data.catalog_item_id)
    if not catalog["active"]:
        raise InvalidInput(
            f"catalog item {data.catalog_item_id} ({catalog['name']}) is no longer offered"
        )
    teeth, surfaces = _check_chart_fields(data.teeth, data.surfaces, data.chart_condition)
    position = data.position
    if position is None:
        position = await db.scalar(
            select(func.coalesce(func.max(items.c.position) + 1, 0)).where(
                items.c.plan_id == plan_id
            )
        )
    item_id: uuid.UUID = await db.scalar(
        items.insert()
        .values(
            plan_id=plan_id,
            position=position,
            catalog_item_id=data.catalog_item_id,
            description=data.description or catalog["name"],
            teeth=teeth,
            surfaces=surfaces,
            chart_condition=data.chart_condition,
            quantity=data.quantity or max(1, len(teeth)),
            unit_price=catalog["default_price"] if data.unit_price is None else data.unit_price,
            discount_percent=data.discount_percent,
        )
        .returning(items.c.id)
    )
    return item_id


async def create_plan(db: AsyncSession, data: PlanIn, created_by: uuid.UUID | None) -> PlanOut:
    await ensure_patient(db, data.patient_id)
    plan_id: uuid.UUID = await db.scalar(
        plans.insert()
        .values(
            patient_id=data.patient_id,
            title=data.title,
            notes=data.notes,
            dentist_id=data.dentist_id,
            created_by=created_by,
        )
        .returning(plans.c.id)
    )
    for item in data.items:
        await _insert_item(db, plan_id, item)
    return await get_plan(db, plan_id)


async def update_plan(
    db: AsyncSession, plan_id: uuid.UUID, data: PlanPatch, expected_version: int
) -> PlanOut:
    plan = await _lock_plan(db, plan_id)
    _require_status(plan, {"draft", "proposed", "accepted", "in_progress"}, "edit the plan")
    values = data.model_dump(exclude_unset=True)
    if "title" in values and values["title"] is None:
        raise InvalidInput("a plan needs a title")
    await update_versioned(db, plans, plan_id, expected_version, values, what="treatment plan")
    return await get_plan(db, plan_id)


async def add_item(db: AsyncSession, plan_id: uuid.UUID, data: ItemIn) -> ItemOut:
    plan = await _lock_plan(db, plan_id)
    _require_status(plan, {"draft"}, "add items")
    item_id = await _insert_item(db, plan_id, data)
    await _touch_plan(db, plan_id)
    return await _item(db, plan_id, item_id)


async def _item(db: AsyncSession, plan_id: uuid.UUID, item_id: uuid.UUID) -> ItemOut:
    row = (
        (
            await db.execute(
                select(items, LINE_TOTAL).where(items.c.id == item_id, items.c.plan_id == plan_id)
            )
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound(f"treatment plan {plan_id} has no item {item_id}")
    return ItemOut.model_validate(dict(row))


async def update_item(
    db: AsyncSession,
    plan_id: uuid.UUID,
    item_id: uuid.UUID,
    data: ItemPatch,
    expected_version: int,
) -> ItemOut:
    plan = await _lock_plan(db, plan_id)
    _require_status(plan, {"draft"}, "change items")
    current = await _item(db, plan_id, item_id)
    values = data.model_dump(exclude_unset=True)
    for required in ("description", "quantity", "unit_price", "discount_percent", "position"):
        if required in values and values[required] is None:
            raise InvalidInput(f"{required} cannot be empty")
    if {"teeth", "surfaces", "chart_condition"} & values.keys():
        teeth, surfaces = _check_chart_fields(
            values.get("teeth", current.teeth) or [],
            values.get("surfaces", current.surfaces) or [],
            values.get("chart_condition", current.chart_condition),
        )
        values.update(teeth=teeth, surfaces=surfaces)
    await update_versioned(
        db,
        items,
        item_id,
        expected_version,
        values,
        what="plan item",
        where=[items.c.plan_id == plan_id],
    )
    await _touch_plan(db, plan_id)
    return await _item(db, plan_id, item_id)


async def delete_item(
    db: AsyncSession, plan_id: uuid.UUID, item_id: uuid.UUID, expected_version: int
) -> None:
    plan = await _lock_plan(db, plan_id)
    _require_status(plan, {"draft"}, "remove items")
    current = await _item(db, plan_id, item_id)
    if current.version != expected_version:
        raise PreconditionFailed(
            f"the plan item changed since you read it (version {expected_version}, now "
            f"{current.version}): read it again before removing it"
        )
    await db.execute(items.delete().where(items.c.id == item_id))
    await _touch_plan(db, plan_id)


# Writing: the status flow ------------------------------------------------------------------


async def propose(
    db: AsyncSession, plan_id: uuid.UUID, valid_until: date | None, by: uuid.UUID | None
) -> QuoteOut:
    """draft -> proposed, issuing the next quote version: a snapshot of what is offered."""
    plan = await _lock_plan(db, plan_id)
    _check_transition(plan, "proposed")
    if valid_until is not None and valid_until < datetime.now(UTC).date():
        raise InvalidInput("valid_until is in the past")
    lines = await _quote_lines(db, plan_id)
    if not lines:
        raise Conflict("the plan has no items to propose: add at least one")
    sums = await _summary_row(db, plan_id)
    number = await db.scalar(
        select(func.coalesce(func.max(quotes.c.number), 0) + 1).where(quotes.c.plan_id == plan_id)
    )
    snapshot = {"patient_id": str(plan["patient_id"]), "title": plan["title"], "lines": lines}
    quote_id = await db.scalar(
        quotes.insert()
        .values(
            plan_id=plan_id,
            number=number,
            snapshot=snapshot,
            subtotal=sums["subtotal"],
            discount=sums["discount"],
            total=sums["total"],
            valid_until=valid_until,
            created_by=by,
        )
        .returning(quotes.c.id)
    )
    await _move(db, plan, "proposed", proposed_at=func.now())
    await publish(
        db,
        QuoteIssued(
            plan_id=plan_id,
            patient_id=plan["patient_id"],
            quote_id=quote_id,
            number=number,
            total=sums["total"],
        ),
    )
    return await get_quote(db, quote_id, clinical=True)


async def _quote_lines(db: AsyncSession, plan_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await db.execute(
        select(items, LINE_TOTAL, catalog_items.c.code)
        .join(catalog_items, catalog_items.c.id == items.c.catalog_item_id)
        .where(items.c.plan_id == plan_id, items.c.status != "cancelled")
        .order_by(items.c.position, items.c.created_at, items.c.id)
    )
    return [
        QuoteLine(
            item_id=r["id"],
            catalog_item_id=r["catalog_item_id"],
            code=r["code"],
            description=r["description"],
            teeth=r["teeth"],
            surfaces=r["surfaces"],
            quantity=r["quantity"],
            unit_price=r["unit_price"],
            discount_percent=r["discount_percent"],
            line_total=r["line_total"],
        ).model_dump(mode="json")
        for r in rows.mappings()
    ]


async def revise(db: AsyncSession, plan_id: uuid.UUID) -> PlanOut:
    """proposed -> draft: the patient wants changes; the quote issued stays on record."""
    plan = await _lock_plan(db, plan_id)
    _check_transition(plan, "draft")
    await _move(db, plan, "draft")
    return await get_plan(db, plan_id)


async def accept(
    db: AsyncSession, plan_id: uuid.UUID, data: AcceptIn, recorded_by: uuid.UUID | None
) -> PlanOut:
    """proposed -> accepted: who accepted which quote, when, and how."""
    plan = await _lock_plan(db, plan_id)
    _check_transition(plan, "accepted")
    latest = (
        (
            await db.execute(
                select(quotes.c.id, quotes.c.number, quotes.c.valid_until)
                .where(quotes.c.plan_id == plan_id)
                .order_by(quotes.c.number.desc())
                .limit(1)
            )
        )
        .mappings()
        .one()
    )
    if data.quote_id is not None and data.quote_id != latest["id"]:
        raise Conflict(
            f"quote {data.quote_id} is not the plan's current quote (version "
            f"{latest['number']}, id {latest['id']}): the patient must accept the latest one"
        )
    if data.method in ("signature", "email") and not data.evidence:
        what = "the signature image" if data.method == "signature" else "the e-mail's reference"
        raise InvalidInput(f"acceptance by {data.method} needs evidence: send {what}")
    accepted_at = _now_or(data.accepted_at, "accepted_at")
    if latest["valid_until"] is not None and accepted_at.date() > latest["valid_until"]:
        raise Conflict(
            f"quote version {latest['number']} expired on {latest['valid_until']}: "
            "revise the plan and propose it again"
        )
    await db.execute(
        acceptances.insert().values(
            plan_id=plan_id,
            quote_id=latest["id"],
            method=data.method,
            accepted_by_name=data.accepted_by_name,
            evidence=data.evidence,
            accepted_at=accepted_at,
            recorded_by=recorded_by,
        )
    )
    await _move(db, plan, "accepted", accepted_at=accepted_at)
    return await get_plan(db, plan_id)


async def close(db: AsyncSession, plan_id: uuid.UUID, to: str, reason: str | None) -> PlanOut:
    """-> rejected or cancelled (closed: nothing changes it any more)."""
    plan = await _lock_plan(db, plan_id)
    _check_transition(plan, to)
    await _move(db, plan, to, closed_at=func.now(), close_reason=reason)
    return await get_plan(db, plan_id)


async def start(db: AsyncSession, plan_id: uuid.UUID) -> PlanOut:
    plan = await _lock_plan(db, plan_id)
    _check_transition(plan, "in_progress")
    await _move(db, plan, "in_progress", started_at=func.now())
    return await get_plan(db, plan_id)


async def _pending_items(db: AsyncSession, plan_id: uuid.UUID) -> int:
    count = await db.scalar(
        select(func.count()).where(items.c.plan_id == plan_id, items.c.status == "pending")
    )
    return int(count or 0)


async def complete(db: AsyncSession, plan_id: uuid.UUID) -> PlanOut:
    plan = await _lock_plan(db, plan_id)
    _check_transition(plan, "completed")
    pending = await _pending_items(db, plan_id)
    if pending:
        raise Conflict(f"{pending} item(s) are still pending: complete or cancel them first")
    await _move(db, plan, "completed", completed_at=func.now())
    return await get_plan(db, plan_id)


async def complete_item(
    db: AsyncSession,
    plan_id: uuid.UUID,
    item_id: uuid.UUID,
    completed_at: datetime | None,
    by: uuid.UUID | None,
) -> ItemOut:
    """Mark an item performed. An accepted plan becomes in_progress, and the plan is
    completed when no item is pending any more."""
    plan = await _lock_plan(db, plan_id)
    _require_status(plan, {"accepted", "in_progress"}, "complete items")
    item = await _item(db, plan_id, item_id)
    if item.status != "pending":
        raise Conflict(f"item {item_id} is already {item.status}")
    when = _now_or(completed_at, "completed_at")
    await db.execute(
        update(items)
        .where(items.c.id == item_id)
        .values(
            status="completed",
            completed_at=when,
            completed_by=by,
            version=items.c.version + 1,
            updated_at=func.now(),
        )
    )
    await publish(
        db,
        ItemCompleted(
            plan_id=plan_id,
            item_id=item_id,
            patient_id=plan["patient_id"],
            catalog_item_id=item.catalog_item_id,
            teeth=item.teeth,
            surfaces=item.surfaces,
            chart_condition=item.chart_condition,
            completed_at=when,
            completed_by=by,
        ),
    )
    await _advance_after_item(db, plan)
    return await _item(db, plan_id, item_id)


async def cancel_item(db: AsyncSession, plan_id: uuid.UUID, item_id: uuid.UUID) -> ItemOut:
    """The patient declines one item of an accepted plan (drafts delete items instead)."""
    plan = await _lock_plan(db, plan_id)
    _require_status(plan, {"accepted", "in_progress"}, "cancel items")
    item = await _item(db, plan_id, item_id)
    if item.status != "pending":
        raise Conflict(f"item {item_id} is already {item.status}")
    await db.execute(
        update(items)
        .where(items.c.id == item_id)
        .values(status="cancelled", version=items.c.version + 1, updated_at=func.now())
    )
    await _advance_after_item(db, plan, started=False)
    return await _item(db, plan_id, item_id)


async def _advance_after_item(db: AsyncSession, plan: RowMapping, *, started: bool = True) -> None:
    """Move the plan along the flow after an item changed: work started, or all done."""
    values: dict[str, Any] = {}
    steps = [plan["status"]]
    if started and steps[-1] == "accepted":
        steps.append("in_progress")
        values["started_at"] = func.now()
    if steps[-1] == "in_progress" and not await _pending_items(db, plan["id"]):
        steps.append("completed")
        values["completed_at"] = func.now()
    await _touch_plan(db, plan["id"], status=steps[-1], **values)
    for before, to in itertools.pairwise(steps):
        await _announce(db, plan, before, to)
