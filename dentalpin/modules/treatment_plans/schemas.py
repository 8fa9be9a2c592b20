"""Request and response bodies of the treatment plans API."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from dentalpin.modules.odontogram.fdi import Condition

PlanStatus = Literal[
    "draft", "proposed", "accepted", "in_progress", "completed", "rejected", "cancelled"
]
ItemStatus = Literal["pending", "completed", "cancelled"]
AcceptanceMethod = Literal["signature", "in_person", "email"]

Money = Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=2)]
Percent = Annotated[Decimal, Field(ge=0, le=100, max_digits=5, decimal_places=2)]
Teeth = Annotated[list[int], Field(max_length=32, description="FDI tooth numbers")]
Surfaces = Annotated[
    list[str], Field(max_length=5, description="surfaces, the same on every tooth listed")
]


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    catalog_item_id: uuid.UUID
    description: str | None = Field(
        default=None, min_length=1, max_length=500, description="default: the catalog name"
    )
    teeth: Teeth = Field(default_factory=list)
    surfaces: Surfaces = Field(default_factory=list)
    chart_condition: Condition | None = Field(
        default=None, description="what the odontogram shows once performed (filling, crown...)"
    )
    quantity: int | None = Field(
        default=None, ge=1, le=999, description="default: one per tooth, or 1"
    )
    unit_price: Money | None = Field(default=None, description="default: the catalog price")
    discount_percent: Percent = Decimal(0)
    position: int | None = Field(default=None, ge=0, description="default: after the others")


class ItemPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(default=None, min_length=1, max_length=500)
    teeth: Teeth | None = None
    surfaces: Surfaces | None = None
    chart_condition: Condition | None = None
    quantity: int | None = Field(default=None, ge=1, le=999)
    unit_price: Money | None = None
    discount_percent: Percent | None = None
    position: int | None = Field(default=None, ge=0)


class PlanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: uuid.UUID
    title: str = Field(min_length=1, max_length=200)
    notes: str | None = Field(default=None, max_length=4000)
    dentist_id: uuid.UUID | None = None
    items: list[ItemIn] = Field(default_factory=list, max_length=100)


class PlanPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=200)
    notes: str | None = Field(default=None, max_length=4000)
    dentist_id: uuid.UUID | None = None


class ItemOut(BaseModel):
    id: uuid.UUID
    plan_id: uuid.UUID
    position: int
    catalog_item_id: uuid.UUID
    description: str
    teeth: list[int]
    surfaces: list[str]
    chart_condition: Condition | None
    quantity: int
    unit_price: Decimal
    discount_percent: Decimal
    line_total: Decimal
    status: ItemStatus
    completed_at: datetime | None
    completed_by: uuid.UUID | None
    version: int


class PlanSummary(BaseModel):
    """What the front desk and accounts see: no teeth, no notes."""

    id: uuid.UUID
    patient_id: uuid.UUID
    title: str
    status: PlanStatus
    item_count: int
    subtotal: Decimal
    discount: Decimal
    total: Decimal
    currency: Literal["EUR"] = "EUR"
    proposed_at: datetime | None
    accepted_at: datetime | None
    completed_at: datetime | None
    closed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int


class QuoteRef(BaseModel):
    id: uuid.UUID
    number: int
    total: Decimal
    created_at: datetime


class AcceptanceOut(BaseModel):
    id: uuid.UUID
    quote_id: uuid.UUID
    method: AcceptanceMethod
    accepted_by_name: str
    evidence: str | None
    accepted_at: datetime
    recorded_by: uuid.UUID | None


class PlanOut(PlanSummary):
    notes: str | None
    dentist_id: uuid.UUID | None
    created_by: uuid.UUID | None
    started_at: datetime | None
    close_reason: str | None
    items: list[ItemOut]
    quotes: list[QuoteRef]
    acceptance: AcceptanceOut | None


class QuoteLine(BaseModel):
    item_id: uuid.UUID
    catalog_item_id: uuid.UUID
    code: str
    description: str
    teeth: list[int] | None = Field(description="null for readers without clinical access")
    surfaces: list[str] | None
    quantity: int
    unit_price: Decimal
    discount_percent: Decimal
    line_total: Decimal


class QuoteOut(BaseModel):
    id: uuid.UUID
    plan_id: uuid.UUID
    patient_id: uuid.UUID
    number: int
    title: str
    lines: list[QuoteLine]
    subtotal: Decimal
    discount: Decimal
    total: Decimal
    currency: Literal["EUR"] = "EUR"
    valid_until: date | None
    created_at: datetime
    created_by: uuid.UUID | None
    accepted: bool


class ProposeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    valid_until: date | None = None


class AcceptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quote_id: uuid.UUID | None = Field(default=None, description="default: the latest quote")
    method: AcceptanceMethod
    accepted_by_name: str = Field(
        min_length=1, max_length=200, description="the patient, or the guardian of a minor"
    )
    evidence: str | None = Field(
        default=None,
        max_length=500_000,
        description="the signature image (data URI) or the e-mail's reference",
    )
    accepted_at: datetime | None = Field(default=None, description="default: now")


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)


class CompleteItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    completed_at: datetime | None = Field(default=None, description="default: now")
