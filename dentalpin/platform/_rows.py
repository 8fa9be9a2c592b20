"""Helpers for module tables: optimistic concurrency on versioned rows, and list pages.

Every mutable module row carries `version` (starting at 1). A client reads it (the
response's `ETag: "<version>"`), sends it back as `If-Match: "<version>"`, and the update
applies only if nobody changed the row in between: one conditional UPDATE, no lock held
between the read and the write.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator
from sqlalchemy import ColumnElement, Select, Table, func, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ._errors import Conflict, InvalidInput, NotFound, PreconditionFailed, PreconditionRequired

_ETAG = re.compile(r'^\s*(?:W/)?"(\d{1,9})"\s*$')


def parse_if_match(header: str | None) -> int:
    """The version an `If-Match` header names; 428 when missing, 422 when malformed."""
    if header is None:
        raise PreconditionRequired(
            "This change needs an If-Match header with the version you last read, "
            'e.g. If-Match: "3" (the ETag of the GET response), so it cannot overwrite '
            "someone else's change."
        )
    found = _ETAG.match(header)
    if found is None:
        raise InvalidInput(
            f'If-Match must be one quoted version number such as "3", not {header!r}.'
        )
    return int(found.group(1))


def etag(version: int) -> str:
    return f'"{version}"'


async def update_versioned(
    session: AsyncSession,
    table: Table,
    row_id: Any,
    expected_version: int,
    values: Mapping[str, Any],
    *,
    what: str,
    where: Sequence[ColumnElement[bool]] = (),
) -> RowMapping:
    """Apply `values` to the row if its version is still `expected_version`; bump the version.

    404 when the row does not exist (or `where` hides it), 412 when it changed since.
    """
    statement = (
        update(table)
        .where(table.c.id == row_id, table.c.version == expected_version, *where)
        .values(**values, version=table.c.version + 1, updated_at=func.now())
        .returning(*table.c)
    )
    row = (await session.execute(statement)).mappings().one_or_none()
    if row is not None:
        return row
    current = await session.scalar(select(table.c.version).where(table.c.id == row_id, *where))
    if current is None:
        raise NotFound(f"No {what} with id {row_id}.")
    raise PreconditionFailed(
        f"The {what} changed since you read it (version {expected_version}, now {current}). "
        "Read it again, reapply your change and send the new version in If-Match."
    )


class PatchBody(BaseModel):
    """A PATCH body: only the fields sent change, `null` clears an optional field, and the
    fields named in `not_null` cannot be cleared. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
    not_null: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _not_null_stay_set(self) -> PatchBody:
        for name in self.not_null:
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"'{name}' cannot be null; leave it out to keep it unchanged")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, with their new values."""
        return self.model_dump(exclude_unset=True)


@dataclass(frozen=True)
class Page:
    """One page of a list: the rows, how many match in total, and where the page starts."""

    items: list[RowMapping]
    total: int
    limit: int
    offset: int


Item = TypeVar("Item", bound=BaseModel)


class PageOf(BaseModel, Generic[Item]):
    """A list response: `PageOf[PatientOut]` has `items`, `total`, `limit` and `offset`."""

    items: list[Item]
    total: int
    limit: int
    offset: int

    @classmethod
    def of(cls, page: Page) -> PageOf[Item]:
        """Build from a `Page`, validating each row into the item model."""
        (item,) = cls.__pydantic_generic_metadata__["args"]
        return cls(
            items=[item.model_validate(dict(row)) for row in page.items],
            total=page.total,
            limit=page.limit,
            offset=page.offset,
        )


def sort_order(
    sort: str, allowed: Mapping[str, ColumnElement[Any]], tiebreak: ColumnElement[Any]
) -> list[ColumnElement[Any]]:
    """ORDER BY for `sort` ("field,-other": a leading '-' sorts descending) over whitelisted
    fields, with a unique tiebreak so pages never overlap."""
    order: list[ColumnElement[Any]] = []
    for part in (p.strip() for p in sort.split(",") if p.strip()):
        name = part.removeprefix("-")
        column = allowed.get(name)
        if column is None:
            raise InvalidInput(
                f"Cannot sort by '{name}'. Sort by one of: {', '.join(sorted(allowed))} "
                "(prefix with '-' for descending)."
            )
        order.append(column.desc() if part.startswith("-") else column.asc())
    order.append(tiebreak.asc())
    return order


async def fetch_page(session: AsyncSession, query: Select[Any], *, limit: int, offset: int) -> Page:
    """Run `query` (already filtered and ordered) for one page, and count every match.

    Most lists fit in their first page (a day's appointments, a name search), and a page
    that is neither full nor past the end already says how many rows match: the count
    query, one more statement (and, in a tenant, one more re-planned statement), is sent
    only when the page cannot tell."""
    rows = list((await session.execute(query.limit(limit).offset(offset))).mappings().all())
    total = known_total(len(rows), limit=limit, offset=offset)
    if total is None:
        counted = select(func.count()).select_from(query.order_by(None).subquery())
        total = int(await session.scalar(counted) or 0)
    return Page(items=rows, total=total, limit=limit, offset=offset)


def known_total(found: int, *, limit: int, offset: int) -> int | None:
    """The number of matches when a page of `found` rows proves it, else None: a partial
    page is the last one; an empty page proves "none" only at offset 0 (past the end,
    the rows may still be fewer than `offset`)."""
    if 0 < found < limit or (found == 0 and offset == 0):
        return offset + found
    return None


UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"


@asynccontextmanager
async def conflicts_as(
    session: AsyncSession, unique: str, foreign_key: str | None = None
) -> AsyncIterator[None]:
    """Run the block in a savepoint; a unique violation becomes 409 `unique`, a foreign-key
    violation 409 `foreign_key` (when given). The request's transaction stays usable."""
    try:
        async with session.begin_nested():
            yield
    except IntegrityError as exc:
        state = getattr(exc.orig, "sqlstate", None)
        if state == UNIQUE_VIOLATION:
            raise Conflict(unique) from None
        if state == FOREIGN_KEY_VIOLATION and foreign_key is not None:
            raise Conflict(foreign_key) from None
        raise
