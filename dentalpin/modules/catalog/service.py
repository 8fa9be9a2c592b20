"""The rules of the catalog: unique item codes, one price list per location, and the
effective price of a treatment at a location (its list's price, else the default price)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Select, func, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from dentalpin.modules.locations.service import get_location
from dentalpin.platform import (
    Forbidden,
    NotFound,
    Page,
    conflicts_as,
    fetch_page,
    sort_order,
    update_versioned,
)

from .models import items, price_lists, prices

VAT_RATES: Mapping[str, tuple[Decimal, str]] = {
    "exempt": (
        Decimal("0"),
        "Exempt: medical and dental care by health professionals (art. 20.Uno.5º LIVA)",
    ),
    "general": (Decimal("21"), "General rate (cosmetic treatments, products)"),
    "reduced": (Decimal("10"), "Reduced rate"),
    "super_reduced": (Decimal("4"), "Super-reduced rate"),
}
"""Spanish VAT (IVA) rates in percent by type; `exempt` is the default for dental care."""

ITEM_SORTS: Mapping[str, ColumnElement[Any]] = {
    "code": items.c.code,
    "name": items.c.name,
    "category": items.c.category,
    "default_price": items.c.default_price,
    "duration_minutes": items.c.duration_minutes,
    "created_at": items.c.created_at,
}
PRICE_LIST_SORTS: Mapping[str, ColumnElement[Any]] = {
    "name": price_lists.c.name,
    "created_at": price_lists.c.created_at,
}
PRICE_SORTS: Mapping[str, ColumnElement[Any]] = {
    "code": items.c.code,
    "name": items.c.name,
    "price": prices.c.price,
}


def _duplicate_code(code: object) -> str:
    return f"A treatment with code '{code}' already exists; codes are unique, choose another."


async def list_items(
    session: AsyncSession,
    *,
    query: str | None,
    category: str | None,
    vat_type: str | None,
    active: bool | None,
    sort: str,
    limit: int,
    offset: int,
) -> Page:
    statement = select(items)
    if query:
        pattern = f"%{query}%"
        statement = statement.where(or_(items.c.code.ilike(pattern), items.c.name.ilike(pattern)))
    if category is not None:
        statement = statement.where(items.c.category == category)
    if vat_type is not None:
        statement = statement.where(items.c.vat_type == vat_type)
    if active is not None:
        statement = statement.where(items.c.active == active)
    statement = statement.order_by(*sort_order(sort, ITEM_SORTS, items.c.id))
    return await fetch_page(session, statement, limit=limit, offset=offset)


async def get_item(session: AsyncSession, item_id: uuid.UUID) -> RowMapping:
    row = (await session.execute(select(items).where(items.c.id == item_id))).mappings().first()
    if row is None:
        raise NotFound(f"No treatment with id {item_id}.")
    return row


async def create_item(session: AsyncSession, values: Mapping[str, Any]) -> RowMapping:
    async with conflicts_as(session, _duplicate_code(values["code"])):
        row = (
            (await session.execute(insert(items).values(**values).returning(*items.c)))
            .mappings()
            .one()
        )
    return row


async def update_item(
    session: AsyncSession, item_id: uuid.UUID, expected_version: int, changes: Mapping[str, Any]
) -> RowMapping:
    async with conflicts_as(session, _duplicate_code(changes.get("code"))):
        return await update_versioned(
            session, items, item_id, expected_version, changes, what="treatment"
        )


async def list_categories(session: AsyncSession) -> list[tuple[str, int]]:
    rows = await session.execute(
        select(items.c.category, func.count())
        .where(items.c.active)
        .group_by(items.c.category)
        .order_by(items.c.category)
    )
    return [(name, count) for name, count in rows]


def _duplicate_list(location_id: object) -> str:
    return (
        f"Location {location_id} already has a price list; edit that list's prices "
        "instead of creating a second one."
    )


async def _check_location(
    session: AsyncSession, location_id: uuid.UUID | None, location_ids: Sequence[str]
) -> None:
    if location_id is not None:
        await get_location(session, location_id, location_ids)


def _visible_lists(location_ids: Sequence[str]) -> list[ColumnElement[bool]]:
    """A member limited to some locations sees their lists and the clinic-wide ones."""
    if not location_ids:
        return []
    allowed = [uuid.UUID(i) for i in location_ids]
    return [or_(price_lists.c.location_id.is_(None), price_lists.c.location_id.in_(allowed))]


def _check_writable(row: RowMapping, location_ids: Sequence[str]) -> None:
    if location_ids and row["location_id"] is None:
        raise Forbidden(
            "This price list applies to every location; only a member with access to every "
            "location may change it."
        )


async def list_price_lists(
    session: AsyncSession,
    location_ids: Sequence[str],
    *,
    location_id: uuid.UUID | None,
    sort: str,
    limit: int,
    offset: int,
) -> Page:
    statement = select(price_lists).where(*_visible_lists(location_ids))
    if location_id is not None:
        statement = statement.where(price_lists.c.location_id == location_id)
    statement = statement.order_by(*sort_order(sort, PRICE_LIST_SORTS, price_lists.c.id))
    return await fetch_page(session, statement, limit=limit, offset=offset)


async def get_price_list(
    session: AsyncSession, price_list_id: uuid.UUID, location_ids: Sequence[str]
) -> RowMapping:
    query = select(price_lists).where(
        price_lists.c.id == price_list_id, *_visible_lists(location_ids)
    )
    row = (await session.execute(query)).mappings().first()
    if row is None:
        raise NotFound(f"No price list with id {price_list_id}.")
    return row


async def create_price_list(
    session: AsyncSession, values: Mapping[str, Any], location_ids: Sequence[str]
) -> RowMapping:
    await _check_location(session, values.get("location_id"), location_ids)
    async with conflicts_as(session, _duplicate_list(values.get("location_id"))):
        row = (
            (await session.execute(insert(price_lists).values(**values).returning(*price_lists.c)))
            .mappings()
            .one()
        )
    return row


async def update_price_list(
    session: AsyncSession,
    price_list_id: uuid.UUID,
    expected_version: int,
    changes: Mapping[str, Any],
    location_ids: Sequence[str],
) -> RowMapping:
    _check_writable(await get_price_list(session, price_list_id, location_ids), location_ids)
    await _check_location(session, changes.get("location_id"), location_ids)
    async with conflicts_as(session, _duplicate_list(changes.get("location_id"))):
        return await update_versioned(
            session, price_lists, price_list_id, expected_version, changes, what="price list"
        )


def _price_rows() -> Select[Any]:
    return select(
        prices.c.price_list_id,
        prices.c.item_id,
        items.c.code,
        items.c.name,
        prices.c.price,
        items.c.default_price,
        prices.c.updated_at,
    ).join(items, items.c.id == prices.c.item_id)


async def list_prices(
    session: AsyncSession,
    price_list_id: uuid.UUID,
    location_ids: Sequence[str],
    *,
    sort: str,
    limit: int,
    offset: int,
) -> Page:
    await get_price_list(session, price_list_id, location_ids)
    statement = (
        _price_rows()
        .where(prices.c.price_list_id == price_list_id)
        .order_by(*sort_order(sort, PRICE_SORTS, prices.c.item_id))
    )
    return await fetch_page(session, statement, limit=limit, offset=offset)


async def set_price(
    session: AsyncSession,
    price_list_id: uuid.UUID,
    item_id: uuid.UUID,
    price: Decimal,
    location_ids: Sequence[str],
) -> RowMapping:
    """Set (or change) the price a list gives a treatment."""
    _check_writable(await get_price_list(session, price_list_id, location_ids), location_ids)
    await get_item(session, item_id)
    statement = pg_insert(prices).values(price_list_id=price_list_id, item_id=item_id, price=price)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[prices.c.price_list_id, prices.c.item_id],
            set_={"price": statement.excluded.price, "updated_at": func.now()},
        )
    )
    query = _price_rows().where(
        prices.c.price_list_id == price_list_id, prices.c.item_id == item_id
    )
    row: RowMapping = (await session.execute(query)).mappings().one()
    return row


async def remove_price(
    session: AsyncSession,
    price_list_id: uuid.UUID,
    item_id: uuid.UUID,
    location_ids: Sequence[str],
) -> None:
    _check_writable(await get_price_list(session, price_list_id, location_ids), location_ids)
    deleted = await session.execute(
        prices.delete().where(prices.c.price_list_id == price_list_id, prices.c.item_id == item_id)
    )
    if not deleted.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"Price list {price_list_id} sets no price for treatment {item_id}.")


async def effective_price(
    session: AsyncSession, item_id: uuid.UUID, location_id: uuid.UUID | None
) -> dict[str, Any]:
    """What a treatment costs at a location: the price in the location's active price
    list when it sets one, else the treatment's default price. Other modules (agenda,
    treatment plans, billing) call this rather than reading the tables."""
    item = await get_item(session, item_id)
    listed = None
    if location_id is not None:
        listed = (
            (
                await session.execute(
                    select(prices.c.price, prices.c.price_list_id)
                    .join(price_lists, price_lists.c.id == prices.c.price_list_id)
                    .where(
                        prices.c.item_id == item_id,
                        price_lists.c.location_id == location_id,
                        price_lists.c.active,
                    )
                )
            )
            .mappings()
            .first()
        )
    return {
        "item_id": item_id,
        "location_id": location_id,
        "price": listed["price"] if listed else item["default_price"],
        "source": "price_list" if listed else "default",
        "price_list_id": listed["price_list_id"] if listed else None,
        "vat_type": item["vat_type"],
        "vat_rate": VAT_RATES[item["vat_type"]][0],
    }
