"""HTTP API of the patients module (mounted at /api/v1/patients/)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from dentalpin.platform import (
    CurrentPrincipal,
    Forbidden,
    IfMatch,
    PageOf,
    Paging,
    Principal,
    TenantDB,
    etag,
    require_permission,
)

from . import service
from .schemas import (
    AlertCreate,
    AlertOut,
    AlertUpdate,
    ConsentCreate,
    ConsentOut,
    ConsentState,
    PatientCreate,
    PatientExport,
    PatientOut,
    PatientUpdate,
)

router = APIRouter()

READ = [require_permission("patients.patient.read")]
WRITE = [require_permission("patients.patient.write")]
ARCHIVE = [require_permission("patients.patient.archive")]
EXPORT = [require_permission("patients.patient.export")]
ALERT_READ = [require_permission("patients.alert.read")]
ALERT_WRITE = [require_permission("patients.alert.write")]


def _sees_alert_details(principal: Principal) -> bool:
    return principal.can("patients.alert.read")


async def _patient(
    db: AsyncSession, row: RowMapping, principal: Principal, response: Response
) -> PatientOut:
    summaries = await service.alert_summaries(
        db, [row["id"]], with_items=_sees_alert_details(principal)
    )
    out = PatientOut.model_validate(
        service.patient_view(row, summaries[row["id"]], service.today())
    )
    response.headers["ETag"] = etag(out.version)
    return out


def _actor(principal: Principal) -> uuid.UUID:
    if principal.user_id is None:
        raise Forbidden(
            "Consents and alerts record the person who took them: sign in as a member of "
            "the clinic (integration clients cannot record them)."
        )
    return principal.user_id


@router.get("/patients", dependencies=READ)
async def list_patients(
    db: TenantDB,
    principal: CurrentPrincipal,
    paging: Paging,
    q: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Name (accents and case ignored), number, document "
            "or phone; every word must match",
        ),
    ] = None,
    archived: Annotated[bool, Query(description="List archived patients instead")] = False,
    sort: Annotated[
        str | None,
        Query(
            description="Comma-separated fields, '-' for descending; default: best match "
            "when searching, else family_name,given_name"
        ),
    ] = None,
) -> PageOf[PatientOut]:
    page = await service.search_patients(
        db, query=q, archived=archived, sort=sort, limit=paging.limit, offset=paging.offset
    )
    summaries = await service.alert_summaries(
        db, [r["id"] for r in page.items], with_items=_sees_alert_details(principal)
    )
    on = service.today()
    return PageOf[PatientOut](
        items=[
            PatientOut.model_validate(service.patient_view(r, summaries[r["id"]], on))
            for r in page.items
        ],
        total=page.total,
        limit=page.limit,
        offset=page.offset,
    )


@router.post("/patients", status_code=201, dependencies=WRITE)
async def create_patient(
    body: PatientCreate, db: TenantDB, principal: CurrentPrincipal, response: Response
) -> PatientOut:
    row = await service.create_patient(db, body.model_dump())
    return await _patient(db, row, principal, response)


@router.get("/patients/{patient_id}", dependencies=READ)
async def get_patient(
    patient_id: uuid.UUID, db: TenantDB, principal: CurrentPrincipal, response: Response
) -> PatientOut:
    return await _patient(db, await service.get_patient(db, patient_id), principal, response)


@router.patch("/patients/{patient_id}", dependencies=WRITE)
async def update_patient(
    patient_id: uuid.UUID,
    body: PatientUpdate,
    version: IfMatch,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> PatientOut:
    row = await service.update_patient(db, patient_id, version, body.changes())
    return await _patient(db, row, principal, response)


@router.post("/patients/{patient_id}/archive", dependencies=ARCHIVE)
async def archive_patient(
    patient_id: uuid.UUID,
    version: IfMatch,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> PatientOut:
    row = await service.set_archived(db, patient_id, version, archived=True)
    return await _patient(db, row, principal, response)


@router.post("/patients/{patient_id}/unarchive", dependencies=ARCHIVE)
async def unarchive_patient(
    patient_id: uuid.UUID,
    version: IfMatch,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> PatientOut:
    row = await service.set_archived(db, patient_id, version, archived=False)
    return await _patient(db, row, principal, response)


@router.get("/patients/{patient_id}/export", dependencies=EXPORT)
async def export_patient(patient_id: uuid.UUID, db: TenantDB, response: Response) -> PatientExport:
    export = PatientExport.model_validate(await service.export_patient(db, patient_id))
    number = export.patient["number"]
    response.headers["Content-Disposition"] = f'attachment; filename="patient-{number}.json"'
    return export


@router.get("/patients/{patient_id}/alerts", dependencies=ALERT_READ)
async def list_alerts(
    patient_id: uuid.UUID, db: TenantDB, include_resolved: bool = False
) -> list[AlertOut]:
    rows = await service.list_alerts(db, patient_id, include_resolved=include_resolved)
    return [AlertOut.model_validate(dict(r)) for r in rows]


@router.post("/patients/{patient_id}/alerts", status_code=201, dependencies=ALERT_WRITE)
async def create_alert(
    patient_id: uuid.UUID,
    body: AlertCreate,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> AlertOut:
    row = await service.create_alert(db, patient_id, body.model_dump(), _actor(principal))
    out = AlertOut.model_validate(dict(row))
    response.headers["ETag"] = etag(out.version)
    return out


@router.patch("/alerts/{alert_id}", dependencies=ALERT_WRITE)
async def update_alert(
    alert_id: uuid.UUID, body: AlertUpdate, version: IfMatch, db: TenantDB, response: Response
) -> AlertOut:
    out = AlertOut.model_validate(
        dict(await service.update_alert(db, alert_id, version, body.changes()))
    )
    response.headers["ETag"] = etag(out.version)
    return out


@router.get("/patients/{patient_id}/consents", dependencies=READ)
async def list_consents(patient_id: uuid.UUID, db: TenantDB) -> ConsentState:
    history = await service.consent_history(db, patient_id)
    return ConsentState.model_validate(
        {
            "current": {k: dict(v) for k, v in service.current_consents(history).items()},
            "history": [dict(r) for r in history],
        }
    )


@router.post("/patients/{patient_id}/consents", status_code=201, dependencies=WRITE)
async def record_consent(
    patient_id: uuid.UUID, body: ConsentCreate, db: TenantDB, principal: CurrentPrincipal
) -> ConsentOut:
    row = await service.record_consent(db, patient_id, body.model_dump(), _actor(principal))
    return ConsentOut.model_validate(dict(row))
