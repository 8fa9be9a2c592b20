"""HTTP API of the catalog module (mounted at /api/v1/catalog/)."""

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
    CategoryOut,
    EffectivePrice,
    ItemCreate,
    ItemOut,
    ItemUpdate,
    PriceIn,
    PriceListCreate,
    PriceListOut,
    PriceListUpdate,
    PriceOut,
    VatType,
    VatTypeOut,
)

router = APIRouter()

READ = [require_permission("catalog.item.read")]
WRITE = [require_permission("catalog.item.write")]
PRICES = [require_permission("catalog.price.write")]
Sort = Annotated[str, Query(description="Comma-separated fields; '-' prefix for descending")]


def _item(row: RowMapping, response: Response) -> ItemOut:
    out = ItemOut.model_validate(dict(row))
    response.headers["ETag"] = etag(out.version)
    return out


def _price_list(row: RowMapping, response: Response) -> PriceListOut:
    out = PriceListOut.model_validate(dict(row))
    response.headers["ETag"] = etag(out.version)
    return out


@router.get("/items", dependencies=READ)
async def list_items(
    db: TenantDB,
    paging: Paging,
    q: Annotated[str | None, Query(max_length=100, description="Code or name contains")] = None,
    category: str | None = None,
    vat_type: VatType | None = None,
    active: Annotated[
        bool | None, Query(description="Only active (true) or retired (false)")
    ] = None,
    sort: Sort = "code",
) -> PageOf[ItemOut]:
    page = await service.list_items(
        db,
        query=q,
        category=category,
        vat_type=vat_type,
        active=active,
        sort=sort,
        limit=paging.limit,
        offset=paging.offset,
    )
    return PageOf[ItemOut].of(page)


@router.post("/items", status_code=201, dependencies=WRITE)
async def create_item(body: ItemCreate, db: TenantDB, response: Response) -> ItemOut:
    return _item(await service.create_item(db, body.model_dump()), response)


@router.get("/items/{item_id}", dependencies=READ)
async def get_item(item_id: uuid.UUID, db: TenantDB, response: Response) -> ItemOut:
    return _item(await service.get_item(db, item_id), response)


@router.patch("/items/{item_id}", dependencies=WRITE)
async def update_item(
    item_id: uuid.UUID, body: ItemUpdate, version: IfMatch, db: TenantDB, response: Response
) -> ItemOut:
    return _item(await service.update_item(db, item_id, version, body.changes()), response)


@router.get("/items/{item_id}/price", dependencies=READ)
async def effective_price(
    item_id: uuid.UUID,
    db: TenantDB,
    location_id: Annotated[
        uuid.UUID | None, Query(description="Price at this location; omit for the default price")
    ] = None,
) -> EffectivePrice:
    return EffectivePrice.model_validate(await service.effective_price(db, item_id, location_id))


@router.get("/categories", dependencies=READ)
async def list_categories(db: TenantDB) -> list[CategoryOut]:
    return [CategoryOut(name=n, items=c) for n, c in await service.list_categories(db)]


@router.get("/vat-types", dependencies=READ)
async def list_vat_types() -> list[VatTypeOut]:
    return [
        VatTypeOut(vat_type=kind, rate=rate, description=text)
        for kind, (rate, text) in service.VAT_RATES.items()
    ]


@router.get("/price-lists", dependencies=READ)
async def list_price_lists(
    db: TenantDB,
    principal: CurrentPrincipal,
    paging: Paging,
    location_id: uuid.UUID | None = None,
    sort: Sort = "name",
) -> PageOf[PriceListOut]:
    page = await service.list_price_lists(
        db,
        principal.location_ids,
        location_id=location_id,
        sort=sort,
        limit=paging.limit,
        offset=paging.offset,
    )
    return PageOf[PriceListOut].of(page)


@router.post("/price-lists", status_code=201, dependencies=PRICES)
async def create_price_list(
    body: PriceListCreate, db: TenantDB, principal: CurrentPrincipal, response: Response
) -> PriceListOut:
    row = await service.create_price_list(db, body.model_dump(), principal.location_ids)
    return _price_list(row, response)


@router.get("/price-lists/{price_list_id}", dependencies=READ)
async def get_price_list(
    price_list_id: uuid.UUID, db: TenantDB, principal: CurrentPrincipal, response: Response
) -> PriceListOut:
    row = await service.get_price_list(db, price_list_id, principal.location_ids)
    return _price_list(row, response)


@router.patch("/price-lists/{price_list_id}", dependencies=PRICES)
async def update_price_list(
    price_list_id: uuid.UUID,
    body: PriceListUpdate,
    version: IfMatch,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> PriceListOut:
    row = await service.update_price_list(
        db, price_list_id, version, body.changes(), principal.location_ids
    )
    return _price_list(row, response)


@router.get("/price-lists/{price_list_id}/prices", dependencies=READ)
async def list_prices(
    price_list_id: uuid.UUID,
    db: TenantDB,
    principal: CurrentPrincipal,
    paging: Paging,
    sort: Sort = "code",
) -> PageOf[PriceOut]:
    page = await service.list_prices(
        db,
        price_list_id,
        principal.location_ids,
        sort=sort,
        limit=paging.limit,
        offset=paging.offset,
    )
    return PageOf[PriceOut].of(page)


@router.put("/price-lists/{price_list_id}/prices/{item_id}", dependencies=PRICES)
async def set_price(
    price_list_id: uuid.UUID,
    item_id: uuid.UUID,
    body: PriceIn,
    db: TenantDB,
    principal: CurrentPrincipal,
) -> PriceOut:
    row = await service.set_price(db, price_list_id, item_id, body.price, principal.location_ids)
    return PriceOut.model_validate(dict(row))


@router.delete(
    "/price-lists/{price_list_id}/prices/{item_id}", status_code=204, dependencies=PRICES
)
async def remove_price(
    price_list_id: uuid.UUID, item_id: uuid.UUID, db: TenantDB, principal: CurrentPrincipal
) -> None:
    await service.remove_price(db, price_list_id, item_id, principal.location_ids)
