"""The rules of the locations module: one default site, live names unique, archive not delete,
and members limited to some locations see and change only those."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, true, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from dentalpin.platform import (
    Conflict,
    Forbidden,
    NotFound,
    Page,
    conflicts_as,
    fetch_page,
    sort_order,
    update_versioned,
)

from .models import cabinets, locations

DEFAULT_TIMEZONE = "Europe/Madrid"
LOCATION_SORTS: Mapping[str, ColumnElement[Any]] = {
    "name": locations.c.name,
    "city": locations.c.city,
    "created_at": locations.c.created_at,
}
CABINET_SORTS: Mapping[str, ColumnElement[Any]] = {
    "name": cabinets.c.name,
    "created_at": cabinets.c.created_at,
}


def _duplicate_name(name: object) -> str:
    return f"A location named '{name}' already exists; choose another name or edit that one."


def visible(location_ids: Sequence[str]) -> list[ColumnElement[bool]]:
    """Filter for a member limited to some locations (empty: every location)."""
    if not location_ids:
        return []
    return [locations.c.id.in_([uuid.UUID(i) for i in location_ids])]


async def create_default_location(session: AsyncSession, *, clinic_name: str) -> None:
    """The clinic's first site, named after the clinic; nothing if it has one already."""
    if await session.scalar(select(func.count()).select_from(locations)):
        return
    await session.execute(
        insert(locations).values(name=clinic_name, timezone=DEFAULT_TIMEZONE, is_default=True)
    )


async def list_locations(
    session: AsyncSession,
    location_ids: Sequence[str],
    *,
    include_archived: bool,
    query: str | None,
    sort: str,
    limit: int,
    offset: int,
) -> Page:
    statement = select(locations).where(*visible(location_ids))
    if not include_archived:
        statement = statement.where(locations.c.archived_at.is_(None))
    if query:
        pattern = f"%{query}%"
        statement = statement.where(
            locations.c.name.ilike(pattern) | locations.c.city.ilike(pattern)
        )
    statement = statement.order_by(*sort_order(sort, LOCATION_SORTS, locations.c.id))
    return await fetch_page(session, statement, limit=limit, offset=offset)


async def get_location(
    session: AsyncSession, location_id: uuid.UUID, location_ids: Sequence[str]
) -> RowMapping:
    row = (
        (
            await session.execute(
                select(locations).where(locations.c.id == location_id, *visible(location_ids))
            )
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound(f"No location with id {location_id}.")
    return row


async def _clear_default(session: AsyncSession, keep: uuid.UUID | None = None) -> None:
    # Before setting a new default: the partial unique index allows only one.
    statement = update(locations).where(locations.c.is_default)
    if keep is not None:
        statement = statement.where(locations.c.id != keep)
    await session.execute(statement.values(is_default=False, version=locations.c.version + 1))


async def create_location(
    session: AsyncSession, values: Mapping[str, Any], location_ids: Sequence[str]
) -> RowMapping:
    if location_ids:
        raise Forbidden(
            "Your membership is limited to some locations, so you cannot create new ones; "
            "ask an administrator with access to every location."
        )
    has_default = await session.scalar(select(func.count()).where(locations.c.is_default))
    values = {**values, "is_default": bool(values.get("is_default")) or not has_default}
    if values["is_default"]:
        await _clear_default(session)
    async with conflicts_as(session, _duplicate_name(values["name"])):
        row = (
            (await session.execute(insert(locations).values(**values).returning(*locations.c)))
            .mappings()
            .one()
        )
    return row


async def update_location(
    session: AsyncSession,
    location_id: uuid.UUID,
    expected_version: int,
    changes: Mapping[str, Any],
    location_ids: Sequence[str],
) -> RowMapping:
    current = await get_location(session, location_id, location_ids)
    if changes.get("is_default") is False and current["is_default"]:
        raise Conflict(
            "A clinic always has a default location; make another location the default "
            "instead of unsetting this one."
        )
    if changes.get("is_default") and current["archived_at"] is not None:
        raise Conflict("An archived location cannot be the default; unarchive it first.")
    if changes.get("is_default") and not current["is_default"]:
        await _clear_default(session, keep=location_id)
    async with conflicts_as(session, _duplicate_name(changes.get("name"))):
        return await update_versioned(
            session, locations, location_id, expected_version, changes, what="location"
        )


async def set_archived(
    session: AsyncSession,
    location_id: uuid.UUID,
    expected_version: int,
    archived: bool,
    location_ids: Sequence[str],
) -> RowMapping:
    current = await get_location(session, location_id, location_ids)
    if archived and current["is_default"]:
        raise Conflict(
            "The default location cannot be archived; make another location the default first."
        )
    async with conflicts_as(session, _duplicate_name(current["name"])):
        return await update_versioned(
            session,
            locations,
            location_id,
            expected_version,
            {"archived_at": func.now() if archived else None},
            what="location",
        )


async def list_cabinets(
    session: AsyncSession,
    location_id: uuid.UUID,
    location_ids: Sequence[str],
    *,
    include_inactive: bool,
    sort: str,
    limit: int,
    offset: int,
) -> Page:
    await get_location(session, location_id, location_ids)
    statement = select(cabinets).where(cabinets.c.location_id == location_id)
    if not include_inactive:
        statement = statement.where(cabinets.c.active == true())
    statement = statement.order_by(*sort_order(sort, CABINET_SORTS, cabinets.c.id))
    return await fetch_page(session, statement, limit=limit, offset=offset)


def _duplicate_cabinet(name: object) -> str:
    return f"This location already has a cabinet named '{name}'; choose another name."


async def create_cabinet(
    session: AsyncSession,
    location_id: uuid.UUID,
    values: Mapping[str, Any],
    location_ids: Sequence[str],
) -> RowMapping:
    location = await get_location(session, location_id, location_ids)
    if location["archived_at"] is not None:
        raise Conflict("The location is archived; unarchive it before adding cabinets.")
    async with conflicts_as(session, _duplicate_cabinet(values["name"])):
        row = (
            (
                await session.execute(
                    insert(cabinets)
                    .values(location_id=location_id, **values)
                    .returning(*cabinets.c)
                )
            )
            .mappings()
            .one()
        )
    return row


def _cabinet_visible(location_ids: Sequence[str]) -> list[ColumnElement[bool]]:
    if not location_ids:
        return []
    return [cabinets.c.location_id.in_([uuid.UUID(i) for i in location_ids])]


async def get_cabinet(
    session: AsyncSession, cabinet_id: uuid.UUID, location_ids: Sequence[str]
) -> RowMapping:
    row = (
        (
            await session.execute(
                select(cabinets).where(cabinets.c.id == cabinet_id, *_cabinet_visible(location_ids))
            )
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound(f"No cabinet with id {cabinet_id}.")
    return row


async def update_cabinet(
    session: AsyncSession,
    cabinet_id: uuid.UUID,
    expected_version: int,
    changes: Mapping[str, Any],
    location_ids: Sequence[str],
) -> RowMapping:
    async with conflicts_as(session, _duplicate_cabinet(changes.get("name"))):
        return await update_versioned(
            session,
            cabinets,
            cabinet_id,
            expected_version,
            changes,
            what="cabinet",
            where=_cabinet_visible(location_ids),
        )
