"""HTTP API of the locations module (mounted at /api/v1/locations/)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.engine import RowMapping

from dentalpin.platform import (
    CurrentPrincipal,
    IfMatch,
    PageOf,
    Paging,
    TenantDB,
    etag,
    require_permission,
)

from . import service
from .schemas import (
    CabinetCreate,
    CabinetOut,
    CabinetUpdate,
    LocationCreate,
    LocationOut,
    LocationUpdate,
)

router = APIRouter()

READ = [require_permission("locations.location.read")]
WRITE = [require_permission("locations.location.write")]
Sort = Annotated[str, Query(description="Comma-separated fields; '-' prefix for descending")]


def _location(row: RowMapping, response: Response) -> LocationOut:
    out = LocationOut.model_validate(dict(row))
    response.headers["ETag"] = etag(out.version)
    return out


def _cabinet(row: RowMapping, response: Response) -> CabinetOut:
    out = CabinetOut.model_validate(dict(row))
    response.headers["ETag"] = etag(out.version)
    return out


@router.get("/locations", dependencies=READ)
async def list_locations(
    db: TenantDB,
    principal: CurrentPrincipal,
    paging: Paging,
    include_archived: bool = False,
    q: Annotated[str | None, Query(max_length=100, description="Name or city contains")] = None,
    sort: Sort = "name",
) -> PageOf[LocationOut]:
    page = await service.list_locations(
        db,
        principal.location_ids,
        include_archived=include_archived,
        query=q,
        sort=sort,
        limit=paging.limit,
        offset=paging.offset,
    )
    return PageOf[LocationOut].of(page)


@router.post("/locations", status_code=201, dependencies=WRITE)
async def create_location(
    body: LocationCreate, db: TenantDB, principal: CurrentPrincipal, response: Response
) -> LocationOut:
    row = await service.create_location(db, body.model_dump(), principal.location_ids)
    return _location(row, response)


@router.get("/locations/{location_id}", dependencies=READ)
async def get_location(
    location_id: uuid.UUID, db: TenantDB, principal: CurrentPrincipal, response: Response
) -> LocationOut:
    return _location(await service.get_location(db, location_id, principal.location_ids), response)


@router.patch("/locations/{location_id}", dependencies=WRITE)
async def update_location(
    location_id: uuid.UUID,
    body: LocationUpdate,
    version: IfMatch,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> LocationOut:
    row = await service.update_location(
        db, location_id, version, body.changes(), principal.location_ids
    )
    return _location(row, response)


@router.post("/locations/{location_id}/archive", dependencies=WRITE)
async def archive_location(
    location_id: uuid.UUID,
    version: IfMatch,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> LocationOut:
    row = await service.set_archived(db, location_id, version, True, principal.location_ids)
    return _location(row, response)


@router.post("/locations/{location_id}/unarchive", dependencies=WRITE)
async def unarchive_location(
    location_id: uuid.UUID,
    version: IfMatch,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> LocationOut:
    row = await service.set_archived(db, location_id, version, False, principal.location_ids)
    return _location(row, response)


@router.get("/locations/{location_id}/cabinets", dependencies=READ)
async def list_cabinets(
    location_id: uuid.UUID,
    db: TenantDB,
    principal: CurrentPrincipal,
    paging: Paging,
    include_inactive: bool = False,
    sort: Sort = "name",
) -> PageOf[CabinetOut]:
    page = await service.list_cabinets(
        db,
        location_id,
        principal.location_ids,
        include_inactive=include_inactive,
        sort=sort,
        limit=paging.limit,
        offset=paging.offset,
    )
    return PageOf[CabinetOut].of(page)


@router.post("/locations/{location_id}/cabinets", status_code=201, dependencies=WRITE)
async def create_cabinet(
    location_id: uuid.UUID,
    body: CabinetCreate,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> CabinetOut:
    row = await service.create_cabinet(db, location_id, body.model_dump(), principal.location_ids)
    return _cabinet(row, response)


@router.get("/cabinets/{cabinet_id}", dependencies=READ)
async def get_cabinet(
    cabinet_id: uuid.UUID, db: TenantDB, principal: CurrentPrincipal, response: Response
) -> CabinetOut:
    return _cabinet(await service.get_cabinet(db, cabinet_id, principal.location_ids), response)


@router.patch("/cabinets/{cabinet_id}", dependencies=WRITE)
async def update_cabinet(
    cabinet_id: uuid.UUID,
    body: CabinetUpdate,
    version: IfMatch,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> CabinetOut:
    row = await service.update_cabinet(
        db, cabinet_id, version, body.changes(), principal.location_ids
    )
    return _cabinet(row, response)
