"""HTTP API of the odontogram: /api/v1/odontogram/..."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from dentalpin.platform import CurrentPrincipal, PageOf, Paging, TenantDB, require_permission

from . import service
from .fdi import (
    CONDITIONS,
    DECIDUOUS_TEETH,
    PERMANENT_TEETH,
    SURFACE_ALIASES,
    SURFACE_CONDITIONS,
    WHOLE_TOOTH_CONDITIONS,
    dentition,
    surfaces_of,
)
from .schemas import ChartOut, EntryIn, EntryKind, EntryOut, NotationOut, ToothInfo

READ = require_permission("odontogram.chart.read")
WRITE = require_permission("odontogram.chart.write")

router = APIRouter()


@router.get("/notation", dependencies=[READ])
async def notation() -> NotationOut:
    """The FDI teeth, their surfaces and the conditions a chart may record."""
    return NotationOut(
        teeth=[
            ToothInfo(tooth=t, dentition=dentition(t), surfaces=list(surfaces_of(t)))
            for t in PERMANENT_TEETH + DECIDUOUS_TEETH
        ],
        conditions=list(CONDITIONS),
        surface_conditions=[c for c in CONDITIONS if c in SURFACE_CONDITIONS],
        whole_tooth_conditions=[c for c in CONDITIONS if c in WHOLE_TOOTH_CONDITIONS],
        surface_aliases=SURFACE_ALIASES,
    )


@router.get("/patients/{patient_id}/chart", dependencies=[READ])
async def get_chart(
    patient_id: uuid.UUID,
    db: TenantDB,
    as_of: Annotated[datetime | None, Query(description="the chart as recorded then")] = None,
) -> ChartOut:
    return await service.chart(db, patient_id, as_of)


@router.get("/patients/{patient_id}/history", dependencies=[READ])
async def get_history(
    patient_id: uuid.UUID,
    db: TenantDB,
    paging: Paging,
    tooth: int | None = None,
    kind: EntryKind | None = None,
    include_superseded: bool = True,
    sort: Annotated[
        str, Query(description="seq, occurred_at, recorded_at, tooth; '-' for descending")
    ] = "-seq",
) -> PageOf[EntryOut]:
    """Every entry of the patient's chart log, corrections and retractions included."""
    return await service.history(
        db,
        patient_id,
        tooth=tooth,
        kind=kind,
        include_superseded=include_superseded,
        sort=sort,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.get("/patients/{patient_id}/entries/{entry_id}", dependencies=[READ])
async def get_entry(patient_id: uuid.UUID, entry_id: uuid.UUID, db: TenantDB) -> EntryOut:
    return await service.get_entry(db, patient_id, entry_id)


@router.post("/patients/{patient_id}/entries", status_code=201, dependencies=[WRITE])
async def post_entry(
    patient_id: uuid.UUID, body: EntryIn, db: TenantDB, principal: CurrentPrincipal
) -> EntryOut:
    """Append an entry; to correct one, send a new entry with `supersedes_id`."""
    return await service.record_entry(db, patient_id, body, principal.user_id)
