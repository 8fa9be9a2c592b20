"""Request and response bodies of the locations API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from dentalpin.platform import PatchBody

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"'{value}' is not an IANA time zone; use a name such as 'Europe/Madrid' "
            "or 'Atlantic/Canary'"
        ) from None
    return value


Name = Annotated[str, Field(min_length=1, max_length=200)]
TimeZone = Annotated[str, AfterValidator(_timezone)]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
Email = Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=254)]
Short = Annotated[str, Field(max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocationCreate(_Strict):
    name: Name
    timezone: TimeZone = "Europe/Madrid"
    address_line: Short | None = None
    postal_code: Short | None = None
    city: Short | None = None
    province: Short | None = None
    country: Country = "ES"
    phone: Short | None = None
    email: Email | None = None
    tax_id: Short | None = Field(None, description="NIF/CIF printed on this site's invoices")
    tax_name: Short | None = Field(None, description="Legal name printed on invoices")
    is_default: bool = False


class LocationUpdate(PatchBody):
    not_null = ("name", "timezone", "country", "is_default")
    name: Name | None = None
    timezone: TimeZone | None = None
    address_line: Short | None = None
    postal_code: Short | None = None
    city: Short | None = None
    province: Short | None = None
    country: Country | None = None
    phone: Short | None = None
    email: Email | None = None
    tax_id: Short | None = None
    tax_name: Short | None = None
    is_default: bool | None = None


class LocationOut(BaseModel):
    id: uuid.UUID
    name: str
    timezone: str
    address_line: str | None
    postal_code: str | None
    city: str | None
    province: str | None
    country: str
    phone: str | None
    email: str | None
    tax_id: str | None
    tax_name: str | None
    is_default: bool
    archived_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


class LocationPage(BaseModel):
    items: list[LocationOut]
    total: int
    limit: int
    offset: int


class CabinetCreate(_Strict):
    name: Name
    active: bool = True


class CabinetUpdate(PatchBody):
    not_null = ("name", "active")
    name: Name | None = None
    active: bool | None = None


class CabinetOut(BaseModel):
    id: uuid.UUID
    location_id: uuid.UUID
    name: str
    active: bool
    version: int
    created_at: datetime
    updated_at: datetime
