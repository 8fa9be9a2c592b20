"""The agenda API: parse, check the permission and the caller's locations, call the service."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from dentalpin.platform import (
    CurrentPrincipal,
    Forbidden,
    IfMatch,
    InvalidInput,
    Members,
    PageOf,
    Paging,
    Principal,
    TenantDB,
    etag,
    require_permission,
)

from . import service
from .schemas import (
    AppointmentIn,
    AppointmentOut,
    AppointmentPatch,
    HoursIn,
    ProfessionalIn,
    ProfessionalOut,
    ProfessionalPatch,
    SlotsOut,
    Status,
    StatusChangeOut,
    TransitionIn,
)

router = APIRouter()

READ = require_permission("agenda.appointment.read")
WRITE = require_permission("agenda.appointment.write")
STAFF_READ = require_permission("agenda.professional.read")
STAFF_WRITE = require_permission("agenda.professional.write")
NOTES = "agenda.appointment.notes"


def tag(response: Response, version: int) -> None:
    response.headers["ETag"] = etag(version)


def scope(principal: Principal) -> service.Scope:
    return service.scope_of(principal.location_ids)


def may_see_notes(principal: Principal) -> bool:
    return principal.can(NOTES)


# ---------------------------------------------------------------------------- professionals


@router.get("/professionals", dependencies=[STAFF_READ], response_model=PageOf[ProfessionalOut])
async def list_professionals(
    db: TenantDB,
    paging: Paging,
    active: bool | None = None,
    location_id: uuid.UUID | None = None,
    sort: str = "display_name",
) -> dict[str, Any]:
    return await service.list_professionals(
        db,
        active=active,
        location_id=location_id,
        sort=sort,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.post(
    "/professionals", dependencies=[STAFF_WRITE], status_code=201, response_model=ProfessionalOut
)
async def create_professional(
    body: ProfessionalIn, db: TenantDB, members: Members, response: Response
) -> dict[str, Any]:
    """Make a member of the clinic bookable (named as their account is, unless given)."""
    member = await members.get(body.user_id)
    if member is None:
        raise InvalidInput(
            f"user {body.user_id} is not a member of this clinic: add them as a member "
            "first (POST /api/v1/members), then make them a professional"
        )
    if body.display_name is None:
        if not member.name:
            raise InvalidInput("the member's account has no name: give display_name")
        body = body.model_copy(update={"display_name": member.name})
    created = await service.create_professional(db, body)
    tag(response, created["version"])
    return created


@router.get(
    "/professionals/{professional_id}", dependencies=[STAFF_READ], response_model=ProfessionalOut
)
async def get_professional(
    professional_id: uuid.UUID, db: TenantDB, response: Response
) -> dict[str, Any]:
    found = await service.get_professional(db, professional_id)
    tag(response, found["version"])
    return found


@router.patch(
    "/professionals/{professional_id}", dependencies=[STAFF_WRITE], response_model=ProfessionalOut
)
async def update_professional(
    professional_id: uuid.UUID,
    body: ProfessionalPatch,
    db: TenantDB,
    response: Response,
    version: IfMatch,
) -> dict[str, Any]:
    updated = await service.update_professional(db, professional_id, version, body)
    tag(response, updated["version"])
    return updated


@router.put(
    "/professionals/{professional_id}/hours",
    dependencies=[STAFF_WRITE],
    response_model=ProfessionalOut,
)
async def set_hours(
    professional_id: uuid.UUID,
    body: HoursIn,
    db: TenantDB,
    response: Response,
    version: IfMatch,
) -> dict[str, Any]:
    """Replace the professional's working hours (all locations, all weekdays)."""
    updated = await service.set_hours(db, professional_id, version, body.hours)
    tag(response, updated["version"])
    return updated


# ---------------------------------------------------------------------------- appointments


@router.get(
    "/appointments",
    dependencies=[READ],
    response_model=PageOf[AppointmentOut],
    response_model_exclude_unset=True,
)
async def list_appointments(
    db: TenantDB,
    principal: CurrentPrincipal,
    paging: Paging,
    location_id: uuid.UUID | None = None,
    professional_id: uuid.UUID | None = None,
    cabinet_id: uuid.UUID | None = None,
    patient_id: uuid.UUID | None = None,
    status: Annotated[list[Status] | None, Query()] = None,
    starts_from: datetime | None = None,
    starts_before: datetime | None = None,
    sort: str = "starts_at",
) -> dict[str, Any]:
    filters = service.AppointmentFilter(
        location_id=location_id,
        professional_id=professional_id,
        cabinet_id=cabinet_id,
        patient_id=patient_id,
        statuses=tuple(status or ()),
        starts_from=starts_from,
        starts_before=starts_before,
    )
    return await service.list_appointments(
        db,
        scope(principal),
        filters,
        sort=sort,
        limit=paging.limit,
        offset=paging.offset,
        with_notes=may_see_notes(principal),
    )


async def _appointment(
    db: TenantDB, principal: Principal, appointment_id: uuid.UUID, response: Response
) -> dict[str, Any]:
    found = await service.get_appointment(
        db, scope(principal), appointment_id, with_notes=may_see_notes(principal)
    )
    tag(response, found["version"])
    return found


def _refuse_notes(principal: Principal, notes_sent: bool) -> None:
    if notes_sent and not may_see_notes(principal):
        raise Forbidden(f"writing clinical notes needs permission '{NOTES}'; leave 'notes' out")


@router.post(
    "/appointments",
    dependencies=[WRITE],
    status_code=201,
    response_model=AppointmentOut,
    response_model_exclude_unset=True,
)
async def book(
    body: AppointmentIn, db: TenantDB, principal: CurrentPrincipal, response: Response
) -> dict[str, Any]:
    _refuse_notes(principal, body.notes is not None)
    appointment_id = await service.book(db, scope(principal), principal.user_id, body)
    return await _appointment(db, principal, appointment_id, response)


@router.get(
    "/appointments/{appointment_id}",
    dependencies=[READ],
    response_model=AppointmentOut,
    response_model_exclude_unset=True,
)
async def get_appointment(
    appointment_id: uuid.UUID, db: TenantDB, principal: CurrentPrincipal, response: Response
) -> dict[str, Any]:
    return await _appointment(db, principal, appointment_id, response)


@router.patch(
    "/appointments/{appointment_id}",
    dependencies=[WRITE],
    response_model=AppointmentOut,
    response_model_exclude_unset=True,
)
async def edit_appointment(
    appointment_id: uuid.UUID,
    body: AppointmentPatch,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
    version: IfMatch,
) -> dict[str, Any]:
    """Move an appointment or change its treatments (notes: clinical roles only)."""
    _refuse_notes(principal, "notes" in body.model_fields_set)
    await service.edit(db, scope(principal), principal.user_id, appointment_id, version, body)
    return await _appointment(db, principal, appointment_id, response)


@router.post(
    "/appointments/{appointment_id}/status",
    dependencies=[WRITE],
    response_model=AppointmentOut,
    response_model_exclude_unset=True,
)
async def change_status(
    appointment_id: uuid.UUID,
    body: TransitionIn,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> dict[str, Any]:
    """Confirm, check in, start, complete, cancel or mark a no-show. No If-Match: the
    appointment is locked and the status flow itself refuses a change that no longer
    applies (confirming a cancelled appointment is 409)."""
    await service.transition(
        db, scope(principal), principal.user_id, appointment_id, body.status, body.reason
    )
    return await _appointment(db, principal, appointment_id, response)


@router.get(
    "/appointments/{appointment_id}/history",
    dependencies=[READ],
    response_model=list[StatusChangeOut],
)
async def appointment_history(
    appointment_id: uuid.UUID, db: TenantDB, principal: CurrentPrincipal
) -> list[dict[str, Any]]:
    return await service.history(db, scope(principal), appointment_id)


@router.get("/slots", dependencies=[READ], response_model=SlotsOut)
async def free_slots(
    db: TenantDB,
    principal: CurrentPrincipal,
    location_id: uuid.UUID,
    date_from: date,
    date_to: date,
    item_id: uuid.UUID | None = None,
    duration_minutes: Annotated[int | None, Query(ge=5, le=720)] = None,
    professional_id: uuid.UUID | None = None,
    step_minutes: Annotated[int, Query(ge=5, le=120)] = 15,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """Free slots for a treatment (its catalog duration) or a given duration."""
    if item_id is not None:
        duration_minutes = await service.treatment_minutes(db, [item_id])
    if not duration_minutes:
        raise InvalidInput("give item_id (a catalog treatment) or duration_minutes")
    search = service.SlotSearch(
        location_id=location_id,
        date_from=date_from,
        date_to=date_to,
        duration=timedelta(minutes=duration_minutes),
        professional_id=professional_id,
        step=timedelta(minutes=step_minutes),
        limit=limit,
    )
    items = await service.free_slots(db, scope(principal), search)
    return {"duration_minutes": duration_minutes, "items": items}
