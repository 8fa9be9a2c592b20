"""Request and response bodies of the odontogram API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .fdi import Condition, Dentition

EntryKind = Literal["condition", "treatment", "void"]


class EntryIn(BaseModel):
    """A new chart entry. A correction names the entry it replaces in `supersedes_id`;
    `kind: void` only retracts it (tooth and surfaces come from the retracted entry)."""

    model_config = ConfigDict(extra="forbid")

    kind: EntryKind
    tooth: int | None = Field(default=None, description="FDI tooth number (11-48, 51-85)")
    surfaces: list[str] = Field(default_factory=list, max_length=5)
    condition: Condition | None = Field(
        default=None,
        description="condition found (kind condition) or left by the treatment (filling...)",
    )
    catalog_item_id: uuid.UUID | None = Field(
        default=None, description="the treatment performed (required for kind treatment)"
    )
    supersedes_id: uuid.UUID | None = None
    occurred_at: datetime | None = Field(default=None, description="when; default: now")
    notes: str | None = Field(default=None, max_length=4000)


class EntryOut(BaseModel):
    id: uuid.UUID
    seq: int
    patient_id: uuid.UUID
    kind: EntryKind
    tooth: int
    surfaces: list[str]
    condition: Condition | None
    catalog_item_id: uuid.UUID | None
    supersedes_id: uuid.UUID | None
    superseded_by: uuid.UUID | None
    notes: str | None
    source: Literal["manual", "treatment_plan"]
    source_ref: uuid.UUID | None
    occurred_at: datetime
    recorded_at: datetime
    recorded_by: uuid.UUID | None


class ToothCondition(BaseModel):
    condition: Condition
    surfaces: list[str] = Field(description="empty: the whole tooth")
    entry_ids: list[uuid.UUID] = Field(description="the entries that put it on the chart")


class ToothTreatment(BaseModel):
    entry_id: uuid.UUID
    catalog_item_id: uuid.UUID | None
    surfaces: list[str]
    condition: Condition | None
    occurred_at: datetime


class ToothOut(BaseModel):
    tooth: int
    dentition: Dentition
    missing: bool
    conditions: list[ToothCondition]
    treatments: list[ToothTreatment]


class ChartOut(BaseModel):
    patient_id: uuid.UUID
    as_of: datetime | None = Field(description="the chart as it was then; null: now")
    last_seq: int | None = Field(description="the newest entry the chart reflects")
    teeth: list[ToothOut]


class ToothInfo(BaseModel):
    tooth: int
    dentition: Dentition
    surfaces: list[str]


class NotationOut(BaseModel):
    """Reference data for charting UIs."""

    teeth: list[ToothInfo]
    conditions: list[Condition]
    surface_conditions: list[Condition]
    whole_tooth_conditions: list[Condition]
    surface_aliases: dict[str, str]


class PlanItemCompleted(BaseModel):
    """What the odontogram reads from `treatment_plans.item_completed` (version 1): its own
    view of the publisher's payload, since it cannot import treatment_plans."""

    model_config = ConfigDict(extra="ignore")

    item_id: uuid.UUID
    patient_id: uuid.UUID
    catalog_item_id: uuid.UUID
    teeth: list[int]
    surfaces: list[str]
    chart_condition: Condition | None
    completed_at: datetime
    completed_by: uuid.UUID | None
