"""The agenda's rules: who may be booked where and when, the status flow, free slots.

Functions take the request's tenant session and a `Scope` (the locations the caller may
see; None: all of them). Double booking is left to the database: an insert or a move
that would overlap a live appointment of the same professional or cabinet violates an
exclusion constraint, which `_no_double_booking` turns into a 409 naming the clash.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Select, delete, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dentalpin.modules.catalog.models import items
from dentalpin.modules.locations.models import cabinets, locations
from dentalpin.modules.patients.models import patients
from dentalpin.platform import (
    Conflict,
    EventContext,
    Forbidden,
    InvalidInput,
    MemberRemoved,
    NotFound,
    Page,
    PreconditionFailed,
    fetch_page,
    publish,
    sort_order,
    update_versioned,
)

from .events import STATUS_EVENTS, AppointmentBooked, AppointmentEvent, AppointmentRescheduled
from .models import (
    FREEING_STATUSES,
    appointment_items,
    appointments,
    professionals,
    status_changes,
    working_hours,
)
from .schemas import (
    AppointmentIn,
    AppointmentPatch,
    ProfessionalIn,
    ProfessionalPatch,
    WorkingHoursIn,
)

Scope = frozenset[uuid.UUID] | None
"""The locations a caller may see and book in; None: every location of the clinic."""

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "scheduled": ("confirmed", "checked_in", "cancelled", "no_show"),
    "confirmed": ("checked_in", "cancelled", "no_show"),
    "checked_in": ("in_treatment", "cancelled"),
    "in_treatment": ("completed",),
    "completed": (),
    "cancelled": (),
    "no_show": (),
}
"""The status flow. A patient who walks in unconfirmed may be checked in directly."""

MOVABLE = ("scheduled", "confirmed")
"""Only appointments that have not started may change time, professional or place."""

CLASH_CONSTRAINTS = {
    "ex_agenda_appointments_professional": "professional",
    "ex_agenda_appointments_cabinet": "cabinet",
}
MAX_APPOINTMENT = timedelta(hours=12)
MAX_SLOT_DAYS = 31
APPOINTMENT_SORTS = {
    "starts_at": appointments.c.starts_at,
    "created_at": appointments.c.created_at,
    "updated_at": appointments.c.updated_at,
}
PROFESSIONAL_SORTS = {
    "display_name": professionals.c.display_name,
    "created_at": professionals.c.created_at,
}


class DoubleBooking(Conflict):
    problem = "double-booking"

    def __init__(self, detail: str, clash: dict[str, Any]) -> None:
        super().__init__(detail)
        self.extra = {"clash": clash}


def scope_of(location_ids: Iterable[str]) -> Scope:
    """A membership's location limit as a scope (ids that are no UUID match nothing)."""
    ids = list(location_ids)
    if not ids:
        return None
    parsed = set()
    for value in ids:
        try:
            parsed.add(uuid.UUID(value))
        except ValueError:
            continue
    return frozenset(parsed)


def _in_scope(scope: Scope, location_id: uuid.UUID) -> bool:
    return scope is None or location_id in scope


# ---------------------------------------------------------------------------- lookups


def _place_query(
    location_id: uuid.UUID,
    cabinet_id: uuid.UUID,
    professional_id: uuid.UUID,
    patient_id: uuid.UUID | None,
) -> Select[Any]:
    """The location, cabinet, professional (and patient) of a booking in one row: each is
    left-joined on its primary key to a one-row probe, so a missing one reads as nulls.

    One statement instead of one per lookup: every statement of a tenant transaction is
    re-analysed and re-planned by PostgreSQL when the connection last ran it for another
    tenant (its search path differed), so on a busy multi-tenant pool each lookup costs a
    planning as well as a round trip."""
    probe = select(literal(1).label("one")).subquery("probe")
    place = (
        probe.outerjoin(locations, locations.c.id == location_id)
        .outerjoin(cabinets, cabinets.c.id == cabinet_id)
        .outerjoin(professionals, professionals.c.id == professional_id)
    )
    columns = [
        locations.c.id.label("location_id"),
        locations.c.name.label("location_name"),
        locations.c.archived_at.label("location_archived_at"),
        cabinets.c.id.label("cabinet_id"),
        cabinets.c.name.label("cabinet_name"),
        cabinets.c.location_id.label("cabinet_location_id"),
        cabinets.c.active.label("cabinet_active"),
        professionals.c.id.label("professional_id"),
        professionals.c.display_name.label("professional_name"),
        professionals.c.active.label("professional_active"),
    ]
    if patient_id is not None:
        place = place.outerjoin(patients, patients.c.id == patient_id)
        columns += [
            patients.c.id.label("patient_id"),
            patients.c.archived_at.label("patient_archived_at"),
        ]
    return select(*columns).select_from(place)


async def _check_place(
    session: AsyncSession,
    scope: Scope,
    location_id: uuid.UUID,
    cabinet_id: uuid.UUID,
    professional_id: uuid.UUID,
    patient_id: uuid.UUID | None = None,
) -> None:
    """A live location the caller may book in, an active cabinet of it, an active
    professional and (when given) a patient who is not archived."""
    if not _in_scope(scope, location_id):
        raise Forbidden(
            f"location {location_id} is not one of the locations your membership covers; "
            "ask a clinic admin to extend it"
        )
    query = _place_query(location_id, cabinet_id, professional_id, patient_id)
    place = (await session.execute(query)).one()
    _check_location(place, location_id)
    _check_cabinet(place, cabinet_id, location_id)
    _check_professional(place, professional_id)
    if patient_id is not None:
        _check_patient(place, patient_id)


def _check_location(place: Any, location_id: uuid.UUID) -> None:
    if place.location_id is None:
        raise InvalidInput(f"location {location_id} does not exist")
    if place.location_archived_at is not None:
        raise InvalidInput(f"location {place.location_name!r} is archived: book in a live location")


def _check_cabinet(place: Any, cabinet_id: uuid.UUID, location_id: uuid.UUID) -> None:
    if place.cabinet_id is None:
        raise InvalidInput(f"cabinet {cabinet_id} does not exist")
    if place.cabinet_location_id != location_id:
        raise InvalidInput(
            f"cabinet {place.cabinet_name!r} belongs to another location; pick a cabinet of "
            f"location {location_id}"
        )
    if not place.cabinet_active:
        raise InvalidInput(f"cabinet {place.cabinet_name!r} is not active")


def _check_professional(place: Any, professional_id: uuid.UUID) -> None:
    if place.professional_id is None:
        raise InvalidInput(f"professional {professional_id} does not exist")
    if not place.professional_active:
        raise InvalidInput(
            f"{place.professional_name} is no longer active: book another professional"
        )


def _check_patient(place: Any, patient_id: uuid.UUID) -> None:
    if place.patient_id is None:
        raise InvalidInput(f"patient {patient_id} does not exist")
    if place.patient_archived_at is not None:
        raise InvalidInput(f"patient {patient_id} is archived: restore the patient first")


async def treatment_minutes(session: AsyncSession, item_ids: Sequence[uuid.UUID]) -> int:
    """Total duration of the treatments (catalog items), each of which must be active."""
    if not item_ids:
        return 0
    rows = (
        await session.execute(
            select(items.c.id, items.c.active, items.c.duration_minutes).where(
                items.c.id.in_(set(item_ids))
            )
        )
    ).all()
    found = {r.id: r for r in rows}
    missing = [str(i) for i in item_ids if i not in found]
    if missing:
        raise InvalidInput(f"catalog items do not exist: {', '.join(missing)}")
    inactive = [str(i) for i in item_ids if not found[i].active]
    if inactive:
        raise InvalidInput(f"catalog items are not active: {', '.join(inactive)}")
    return sum(int(found[i].duration_minutes) for i in item_ids)


def _check_times(starts_at: datetime, ends_at: datetime) -> None:
    if ends_at <= starts_at:
        raise InvalidInput(f"ends_at ({ends_at}) must be after starts_at ({starts_at})")
    if ends_at - starts_at > MAX_APPOINTMENT:
        raise InvalidInput("an appointment lasts at most 12 hours; split longer sessions")


# ---------------------------------------------------------------------------- professionals


def _professionals_query() -> Select[Any]:
    hours = (
        select(
            func.coalesce(
                func.jsonb_agg(
                    func.jsonb_build_object(
                        "location_id",
                        working_hours.c.location_id,
                        "weekday",
                        working_hours.c.weekday,
                        "starts_at",
                        working_hours.c.starts_at,
                        "ends_at",
                        working_hours.c.ends_at,
                    )
                ).filter(working_hours.c.id.is_not(None)),
                func.jsonb_build_array(),
            )
        )
        .where(working_hours.c.professional_id == professionals.c.id)
        .scalar_subquery()
    )
    return select(professionals, hours.label("hours"))


def _page(page: Page, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": items, "total": page.total, "limit": page.limit, "offset": page.offset}


def _professional_out(row: Mapping[Any, Any]) -> dict[str, Any]:
    data = dict(row)
    data.pop("created_at"), data.pop("updated_at")
    data["hours"] = sorted(
        data["hours"], key=lambda h: (h["location_id"], h["weekday"], h["starts_at"])
    )
    return data


async def get_professional(session: AsyncSession, professional_id: uuid.UUID) -> dict[str, Any]:
    row = (
        (await session.execute(_professionals_query().where(professionals.c.id == professional_id)))
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound(f"no professional {professional_id}")
    return _professional_out(row)


async def list_professionals(
    session: AsyncSession,
    *,
    active: bool | None,
    location_id: uuid.UUID | None,
    sort: str,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    conditions = []
    if active is not None:
        conditions.append(professionals.c.active.is_(active))
    if location_id is not None:
        conditions.append(
            professionals.c.id.in_(
                select(working_hours.c.professional_id).where(
                    working_hours.c.location_id == location_id
                )
            )
        )
    order = sort_order(sort, PROFESSIONAL_SORTS, professionals.c.id)
    query = _professionals_query().where(*conditions).order_by(*order)
    page = await fetch_page(session, query, limit=limit, offset=offset)
    return _page(page, [_professional_out(r) for r in page.items])


async def _check_hour_locations(session: AsyncSession, hours: Sequence[WorkingHoursIn]) -> None:
    wanted = {h.location_id for h in hours}
    if not wanted:
        return
    found = set(
        (await session.execute(select(locations.c.id).where(locations.c.id.in_(wanted)))).scalars()
    )
    missing = sorted(str(i) for i in wanted - found)
    if missing:
        raise InvalidInput(f"working hours name locations that do not exist: {', '.join(missing)}")


async def _write_hours(
    session: AsyncSession, professional_id: uuid.UUID, hours: Sequence[WorkingHoursIn]
) -> None:
    await _check_hour_locations(session, hours)
    await session.execute(
        delete(working_hours).where(working_hours.c.professional_id == professional_id)
    )
    if hours:
        await session.execute(
            insert(working_hours),
            [{"professional_id": professional_id, **h.model_dump()} for h in hours],
        )


async def create_professional(session: AsyncSession, data: ProfessionalIn) -> dict[str, Any]:
    taken = await session.scalar(
        select(professionals.c.id).where(professionals.c.user_id == data.user_id)
    )
    if taken is not None:
        raise Conflict(
            f"user {data.user_id} is already professional {taken}; edit that one instead"
        )
    professional_id = await session.scalar(
        insert(professionals)
        .values(user_id=data.user_id, display_name=data.display_name, color=data.color)
        .returning(professionals.c.id)
    )
    assert professional_id is not None
    await _write_hours(session, professional_id, data.hours)
    return await get_professional(session, professional_id)


async def _bump_professional(
    session: AsyncSession, professional_id: uuid.UUID, version: int, values: dict[str, Any]
) -> None:
    await update_versioned(
        session, professionals, professional_id, version, values, what="professional"
    )


async def update_professional(
    session: AsyncSession, professional_id: uuid.UUID, version: int, data: ProfessionalPatch
) -> dict[str, Any]:
    await _bump_professional(session, professional_id, version, data.model_dump(exclude_none=True))
    return await get_professional(session, professional_id)


async def set_hours(
    session: AsyncSession,
    professional_id: uuid.UUID,
    version: int,
    hours: Sequence[WorkingHoursIn],
) -> dict[str, Any]:
    await _bump_professional(session, professional_id, version, {})
    await _write_hours(session, professional_id, hours)
    return await get_professional(session, professional_id)


# ---------------------------------------------------------------------------- appointments


def _appointments_query() -> Select[Any]:
    treatments = (
        select(
            func.array_agg(
                aggregate_order_by(appointment_items.c.item_id, appointment_items.c.position)
            )
        )
        .where(appointment_items.c.appointment_id == appointments.c.id)
        .scalar_subquery()
    )
    return select(appointments, treatments.label("treatments"))


def _appointment_out(row: Mapping[Any, Any], with_notes: bool) -> dict[str, Any]:
    data = dict(row)
    data["treatments"] = list(data["treatments"] or [])
    if not with_notes:
        # Clinical notes are for clinical roles: the key is absent, not empty.
        data.pop("notes")
    return data


def _visible(scope: Scope) -> list[Any]:
    return [] if scope is None else [appointments.c.location_id.in_(scope)]


async def get_appointment(
    session: AsyncSession, scope: Scope, appointment_id: uuid.UUID, *, with_notes: bool
) -> dict[str, Any]:
    row = (
        (
            await session.execute(
                _appointments_query().where(appointments.c.id == appointment_id, *_visible(scope))
            )
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound(f"no appointment {appointment_id}")
    return _appointment_out(row, with_notes)


@dataclass(frozen=True)
class AppointmentFilter:
    location_id: uuid.UUID | None = None
    professional_id: uuid.UUID | None = None
    cabinet_id: uuid.UUID | None = None
    patient_id: uuid.UUID | None = None
    statuses: tuple[str, ...] = ()
    starts_from: datetime | None = None
    starts_before: datetime | None = None

    def conditions(self) -> list[Any]:
        found: list[Any] = []
        for column in ("location_id", "professional_id", "cabinet_id", "patient_id"):
            value = getattr(self, column)
            if value is not None:
                found.append(appointments.c[column] == value)
        if self.statuses:
            found.append(appointments.c.status.in_(self.statuses))
        if self.starts_from is not None:
            found.append(appointments.c.starts_at >= self.starts_from)
        if self.starts_before is not None:
            found.append(appointments.c.starts_at < self.starts_before)
        return found


async def list_appointments(
    session: AsyncSession,
    scope: Scope,
    filters: AppointmentFilter,
    *,
    sort: str,
    limit: int,
    offset: int,
    with_notes: bool,
) -> dict[str, Any]:
    conditions = [*_visible(scope), *filters.conditions()]
    order = sort_order(sort, APPOINTMENT_SORTS, appointments.c.id)
    query = _appointments_query().where(*conditions).order_by(*order)
    page = await fetch_page(session, query, limit=limit, offset=offset)
    return _page(page, [_appointment_out(r, with_notes) for r in page.items])


async def _clash(
    session: AsyncSession,
    kind: str,
    values: dict[str, Any],
    exclude: uuid.UUID | None,
) -> DoubleBooking:
    """The live appointment that holds the slot, as a 409 that names it."""
    column = appointments.c[f"{kind}_id"]
    overlapping = [
        column == values[f"{kind}_id"],
        appointments.c.status.not_in(FREEING_STATUSES),
        appointments.c.starts_at < values["ends_at"],
        appointments.c.ends_at > values["starts_at"],
    ]
    if exclude is not None:
        overlapping.append(appointments.c.id != exclude)
    other = (
        await session.execute(
            select(
                appointments.c.id,
                appointments.c.starts_at,
                appointments.c.ends_at,
                locations.c.timezone,
            )
            .join(locations, locations.c.id == appointments.c.location_id)
            .where(*overlapping)
            .order_by(appointments.c.starts_at)
            .limit(1)
        )
    ).one_or_none()
    who = await _label(session, kind, values[f"{kind}_id"])
    clash: dict[str, Any] = {"kind": kind, f"{kind}_id": str(values[f"{kind}_id"])}
    if other is None:  # cancelled between the violation and this look
        return DoubleBooking(f"{who} is already booked at that time; pick another slot", clash)
    clash |= {
        "appointment_id": str(other.id),
        "starts_at": other.starts_at.isoformat(),
        "ends_at": other.ends_at.isoformat(),
    }
    zone = zone_of(other.timezone)
    starts, ends = other.starts_at.astimezone(zone), other.ends_at.astimezone(zone)
    return DoubleBooking(
        f"{who} is already booked on {starts:%Y-%m-%d} from {starts:%H:%M} to {ends:%H:%M} "
        f"({other.timezone}), appointment {other.id}; pick another time or {kind}, "
        "or move that appointment first",
        clash,
    )


async def _label(session: AsyncSession, kind: str, entity_id: uuid.UUID) -> str:
    if kind == "professional":
        name = await session.scalar(
            select(professionals.c.display_name).where(professionals.c.id == entity_id)
        )
    else:
        name = await session.scalar(select(cabinets.c.name).where(cabinets.c.id == entity_id))
    return f"{kind} {name or entity_id}"


async def _no_double_booking(
    session: AsyncSession, statement: Any, values: dict[str, Any], exclude: uuid.UUID | None
) -> Any:
    """Run an insert or update of an appointment; an overlap becomes a 409 naming the clash.

    The savepoint keeps the request's transaction usable after the violation, so the
    clashing appointment can be looked up for the message."""
    try:
        async with session.begin_nested():
            return (await session.execute(statement)).one_or_none()
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.orig, "__cause__", None), "constraint_name", None)
        if constraint not in CLASH_CONSTRAINTS:
            raise
        raise await _clash(session, CLASH_CONSTRAINTS[constraint], values, exclude) from None


async def _record(
    session: AsyncSession,
    appointment_id: uuid.UUID,
    from_status: str | None,
    to_status: str,
    actor: uuid.UUID | None,
    reason: str | None = None,
) -> None:
    await session.execute(
        insert(status_changes).values(
            appointment_id=appointment_id,
            from_status=from_status,
            to_status=to_status,
            changed_by=actor,
            reason=reason,
        )
    )


async def _write_treatments(
    session: AsyncSession,
    appointment_id: uuid.UUID,
    item_ids: Sequence[uuid.UUID],
    *,
    replace: bool = True,
) -> None:
    """The appointment's treatments, in order; `replace=False` for a new appointment,
    which has none to delete."""
    if replace:
        await session.execute(
            delete(appointment_items).where(appointment_items.c.appointment_id == appointment_id)
        )
    if item_ids:
        await session.execute(
            insert(appointment_items),
            [
                {"appointment_id": appointment_id, "position": n, "item_id": item}
                for n, item in enumerate(item_ids, start=1)
            ],
        )


async def _announce(
    session: AsyncSession,
    event: type[AppointmentEvent],
    appointment_id: uuid.UUID,
    actor: uuid.UUID | None,
    **extra: Any,
) -> None:
    """Publish `event` about the appointment as it is now, in the caller's transaction."""
    row = (
        await session.execute(select(appointments).where(appointments.c.id == appointment_id))
    ).one()
    await _announce_row(session, event, row, actor, **extra)


async def _announce_row(
    session: AsyncSession,
    event: type[AppointmentEvent],
    row: Any,
    actor: uuid.UUID | None,
    **extra: Any,
) -> None:
    """Publish `event` about the appointment `row` (every column of it)."""
    await publish(
        session,
        event(
            appointment_id=row.id,
            patient_id=row.patient_id,
            professional_id=row.professional_id,
            cabinet_id=row.cabinet_id,
            location_id=row.location_id,
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            status=row.status,
            changed_by=actor,
            **extra,
        ),
    )


async def book(
    session: AsyncSession, scope: Scope, actor: uuid.UUID | None, data: AppointmentIn
) -> uuid.UUID:
    """Book an appointment (status `scheduled`); returns its id."""
    await _check_place(
        session, scope, data.location_id, data.cabinet_id, data.professional_id, data.patient_id
    )
    minutes = await treatment_minutes(session, data.treatments)
    ends_at = data.ends_at
    if ends_at is None:
        if not minutes:
            raise InvalidInput("give ends_at, or treatments whose durations make up the length")
        ends_at = data.starts_at + timedelta(minutes=minutes)
    _check_times(data.starts_at, ends_at)
    values = {
        "patient_id": data.patient_id,
        "professional_id": data.professional_id,
        "cabinet_id": data.cabinet_id,
        "location_id": data.location_id,
        "starts_at": data.starts_at,
        "ends_at": ends_at,
        "notes": data.notes,
        "booked_by": actor,
    }
    # The whole new row comes back, so the event needs no re-read.
    statement = insert(appointments).values(values).returning(*appointments.c)
    row = await _no_double_booking(session, statement, values, None)
    await _write_treatments(session, row.id, data.treatments, replace=False)
    await _record(session, row.id, None, "scheduled", actor)
    appointment_id: uuid.UUID = row.id
    await _announce_row(session, AppointmentBooked, row, actor)
    return appointment_id


async def _locked(session: AsyncSession, scope: Scope, appointment_id: uuid.UUID) -> Any:
    """The appointment, locked for this transaction (status changes serialise on it)."""
    row = (
        await session.execute(
            select(appointments)
            .where(appointments.c.id == appointment_id, *_visible(scope))
            .with_for_update()
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"no appointment {appointment_id}")
    return row


def _check_version(row: Any, version: int) -> None:
    if row.version != version:
        raise PreconditionFailed(
            f"appointment {row.id} changed meanwhile (version {row.version}, you sent "
            f"{version}); reload it and apply your change again"
        )


async def edit(
    session: AsyncSession,
    scope: Scope,
    actor: uuid.UUID | None,
    appointment_id: uuid.UUID,
    version: int,
    data: AppointmentPatch,
) -> bool:
    """Move an appointment (time, professional, cabinet, location) or change its
    treatments or notes; returns whether it moved. A new start without a new end keeps
    the length."""
    current = await _locked(session, scope, appointment_id)
    _check_version(current, version)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("starts_at") is not None and "ends_at" not in changes:
        changes["ends_at"] = changes["starts_at"] + (current.ends_at - current.starts_at)
    place = {
        k: changes.get(k) or getattr(current, k)
        for k in ("location_id", "cabinet_id", "professional_id", "starts_at", "ends_at")
    }
    moved = any(
        k in changes and changes[k] is not None and changes[k] != getattr(current, k) for k in place
    )
    terminal = not TRANSITIONS[current.status]
    if moved and current.status not in MOVABLE:
        raise Conflict(
            f"appointment {appointment_id} is {current.status}: only scheduled or confirmed "
            "appointments can be moved"
        )
    if "treatments" in changes and terminal:
        raise Conflict(
            f"appointment {appointment_id} is {current.status}: its treatments are final"
        )
    if changes.get("treatments") is not None:
        await treatment_minutes(session, changes["treatments"])
    if moved:
        await _check_place(
            session, scope, place["location_id"], place["cabinet_id"], place["professional_id"]
        )
        _check_times(place["starts_at"], place["ends_at"])
    values: dict[str, Any] = {k: v for k, v in place.items() if k in changes}
    if "notes" in changes:
        values["notes"] = changes["notes"]
    statement = (
        update(appointments)
        .where(appointments.c.id == appointment_id)
        .values(**values, version=appointments.c.version + 1, updated_at=func.now())
        .returning(appointments.c.id)
    )
    await _no_double_booking(session, statement, place, appointment_id)
    if changes.get("treatments") is not None:
        await _write_treatments(session, appointment_id, changes["treatments"])
    if moved:
        await _announce(
            session,
            AppointmentRescheduled,
            appointment_id,
            actor,
            previous_starts_at=current.starts_at,
            previous_ends_at=current.ends_at,
        )
    return moved


async def transition(
    session: AsyncSession,
    scope: Scope,
    actor: uuid.UUID | None,
    appointment_id: uuid.UUID,
    to_status: str,
    reason: str | None,
) -> str:
    """Move an appointment along the status flow; returns the status it left."""
    current = await _locked(session, scope, appointment_id)
    allowed = TRANSITIONS[current.status]
    if to_status not in allowed:
        then = f"it can become {', '.join(allowed)}" if allowed else "that is final"
        raise Conflict(
            f"appointment {appointment_id} is {current.status} and cannot become "
            f"{to_status}; {then}"
        )
    await session.execute(
        update(appointments)
        .where(appointments.c.id == appointment_id)
        .values(status=to_status, version=appointments.c.version + 1, updated_at=func.now())
    )
    await _record(session, appointment_id, current.status, to_status, actor, reason)
    from_status: str = current.status
    await _announce(
        session,
        STATUS_EVENTS[to_status],
        appointment_id,
        actor,
        from_status=from_status,
        reason=reason,
    )
    return from_status


async def history(
    session: AsyncSession, scope: Scope, appointment_id: uuid.UUID
) -> list[dict[str, Any]]:
    visible = await session.scalar(
        select(appointments.c.id).where(appointments.c.id == appointment_id, *_visible(scope))
    )
    if visible is None:
        raise NotFound(f"no appointment {appointment_id}")
    rows = await session.execute(
        select(
            status_changes.c.from_status,
            status_changes.c.to_status,
            status_changes.c.changed_by,
            status_changes.c.changed_at,
            status_changes.c.reason,
        )
        .where(status_changes.c.appointment_id == appointment_id)
        .order_by(status_changes.c.changed_at, status_changes.c.id)
    )
    return [dict(r._mapping) for r in rows]


# ---------------------------------------------------------------------------- free slots

Interval = tuple[datetime, datetime]


class _Busy:
    """Sorted busy intervals of one professional or cabinet, for overlap tests."""

    def __init__(self, intervals: Iterable[Interval]) -> None:
        self.intervals = sorted(intervals)
        self.starts = [s for s, _ in self.intervals]

    def free(self, start: datetime, end: datetime) -> bool:
        # Only intervals starting before `end` can overlap `[start, end)`.
        i = bisect.bisect_left(self.starts, end)
        return all(e <= start for _, e in self.intervals[:i])


@dataclass(frozen=True)
class SlotSearch:
    location_id: uuid.UUID
    date_from: date
    date_to: date
    duration: timedelta
    professional_id: uuid.UUID | None = None
    step: timedelta = timedelta(minutes=15)
    limit: int = 50
    not_before: datetime | None = None


def zone_of(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


async def _busy(
    session: AsyncSession, column: Any, ids: Sequence[uuid.UUID], start: datetime, end: datetime
) -> dict[uuid.UUID, _Busy]:
    rows = await session.execute(
        select(column, appointments.c.starts_at, appointments.c.ends_at).where(
            column.in_(ids),
            appointments.c.status.not_in(FREEING_STATUSES),
            appointments.c.starts_at < end,
            appointments.c.ends_at > start,
        )
    )
    found: dict[uuid.UUID, list[Interval]] = {i: [] for i in ids}
    for owner, s, e in rows:
        found[owner].append((s, e))
    return {i: _Busy(v) for i, v in found.items()}


async def free_slots(
    session: AsyncSession, scope: Scope, search: SlotSearch
) -> list[dict[str, Any]]:
    """Start times (every `step`) within working hours at which a professional and an
    active cabinet of the location are both free for `duration`, earliest first."""
    if not _in_scope(scope, search.location_id):
        raise NotFound(f"no location {search.location_id}")
    days = (search.date_to - search.date_from).days + 1
    if days < 1 or days > MAX_SLOT_DAYS:
        raise InvalidInput(f"search at most {MAX_SLOT_DAYS} days, with date_to >= date_from")
    location = (
        await session.execute(select(locations).where(locations.c.id == search.location_id))
    ).one_or_none()
    if location is None:
        raise NotFound(f"no location {search.location_id}")
    zone = zone_of(location.timezone)
    hours_query = (
        select(working_hours)
        .join(professionals, professionals.c.id == working_hours.c.professional_id)
        .where(working_hours.c.location_id == search.location_id, professionals.c.active)
    )
    if search.professional_id is not None:
        hours_query = hours_query.where(working_hours.c.professional_id == search.professional_id)
    shifts: dict[int, list[tuple[uuid.UUID, time, time]]] = {}
    for h in await session.execute(hours_query):
        shifts.setdefault(h.weekday, []).append((h.professional_id, h.starts_at, h.ends_at))
    rooms = list(
        (
            await session.execute(
                select(cabinets.c.id)
                .where(cabinets.c.location_id == search.location_id, cabinets.c.active)
                .order_by(cabinets.c.name)
            )
        ).scalars()
    )
    if not shifts or not rooms:
        return []
    first = datetime.combine(search.date_from, time.min, zone)
    last = datetime.combine(search.date_to + timedelta(days=1), time.min, zone)
    people = sorted({p for day in shifts.values() for p, _, _ in day})
    busy_people = await _busy(session, appointments.c.professional_id, people, first, last)
    busy_rooms = await _busy(session, appointments.c.cabinet_id, rooms, first, last)
    not_before = search.not_before or datetime.now(UTC)
    found: list[tuple[datetime, str, uuid.UUID, uuid.UUID]] = []
    for n in range(days):
        day = search.date_from + timedelta(days=n)
        for professional_id, opens, closes in shifts.get(day.isoweekday(), []):
            start = datetime.combine(day, opens, zone)
            close = datetime.combine(day, closes, zone)
            while start + search.duration <= close:
                end = start + search.duration
                if start >= not_before and busy_people[professional_id].free(start, end):
                    room = next((r for r in rooms if busy_rooms[r].free(start, end)), None)
                    if room is not None:
                        found.append((start, str(professional_id), professional_id, room))
                start += search.step
    found.sort()
    return [
        {
            "starts_at": s.astimezone(UTC),
            "ends_at": (s + search.duration).astimezone(UTC),
            "professional_id": p,
            "cabinet_id": r,
        }
        for s, _, p, r in found[: search.limit]
    ]


# ---------------------------------------------------------------------------- membership


async def on_member_removed(ctx: EventContext) -> None:
    """Subscriber of `platform.member_removed`: a member who left the clinic is no longer
    bookable. Their appointments stay where they are, for the clinic to move or cancel."""
    left = ctx.parse(MemberRemoved)
    await ctx.session.execute(
        update(professionals)
        .where(professionals.c.user_id == left.user_id, professionals.c.active)
        .values(active=False, version=professionals.c.version + 1, updated_at=func.now())
    )
