"""Request and response bodies of the catalog API."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from dentalpin.platform import PatchBody

VatType = Literal["exempt", "general", "reduced", "super_reduced"]
Money = Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=2, examples=["45.00"])]
Code = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Category = Annotated[str, Field(min_length=1, max_length=80)]
Minutes = Annotated[int, Field(gt=0, le=600)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemCreate(_Strict):
    code: Code
    name: Name
    category: Category = "general"
    description: str | None = Field(None, max_length=2000)
    default_price: Money = Decimal("0.00")
    duration_minutes: Minutes = 30
    vat_type: VatType = Field(
        "exempt", description="Dental care is exempt from VAT in Spain (art. 20.Uno.5º LIVA)"
    )
    active: bool = True


class ItemUpdate(PatchBody):
    not_null = ("code", "name", "category", "default_price", "duration_minutes", "vat_type")
    code: Code | None = None
    name: Name | None = None
    category: Category | None = None
    description: str | None = Field(None, max_length=2000)
    default_price: Money | None = None
    duration_minutes: Minutes | None = None
    vat_type: VatType | None = None
    active: bool | None = None


class ItemOut(BaseModel):
    id: uuid.UUID
    code: str
    name: str
    category: str
    description: str | None
    default_price: Decimal
    duration_minutes: int
    vat_type: VatType
    active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class CategoryOut(BaseModel):
    name: str
    items: int


class VatTypeOut(BaseModel):
    vat_type: VatType
    rate: Decimal
    description: str


class PriceListCreate(_Strict):
    name: Name
    location_id: uuid.UUID | None = Field(
        None, description="The location whose prices this list sets (at most one list each)"
    )
    active: bool = True


class PriceListUpdate(PatchBody):
    not_null = ("name", "active")
    name: Name | None = None
    location_id: uuid.UUID | None = None
    active: bool | None = None


class PriceListOut(BaseModel):
    id: uuid.UUID
    name: str
    location_id: uuid.UUID | None
    active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class PriceIn(_Strict):
    price: Money


class PriceOut(BaseModel):
    price_list_id: uuid.UUID
    item_id: uuid.UUID
    code: str
    name: str
    price: Decimal
    default_price: Decimal
    updated_at: datetime


class EffectivePrice(BaseModel):
    item_id: uuid.UUID
    location_id: uuid.UUID | None
    price: Decimal
    source: Literal["price_list", "default"]
    price_list_id: uuid.UUID | None
    vat_type: VatType
    vat_rate: Decimal
