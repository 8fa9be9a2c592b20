"""Request and response bodies of the agenda API."""

from __future__ import annotations

import uuid
from datetime import datetime, time
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

Status = Literal[
    "scheduled",
    "confirmed",
    "checked_in",
    "in_treatment",
    "completed",
    "cancelled",
    "no_show",
]
COLOR_PATTERN = r"^#[0-9a-fA-F]{6}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkingHoursIn(_In):
    location_id: uuid.UUID
    weekday: int = Field(ge=1, le=7, description="ISO weekday: 1 = Monday ... 7 = Sunday")
    starts_at: time
    ends_at: time

    @model_validator(mode="after")
    def _ends_after_start(self) -> WorkingHoursIn:
        if self.ends_at <= self.starts_at:
            raise ValueError(
                f"ends_at ({self.ends_at}) must be after starts_at ({self.starts_at}); "
                "a split shift is two entries"
            )
        return self


class WorkingHoursOut(BaseModel):
    location_id: uuid.UUID
    weekday: int
    starts_at: time
    ends_at: time


class ProfessionalIn(_In):
    user_id: uuid.UUID = Field(description="A member of the clinic: their platform user id")
    display_name: str | None = Field(
        default=None, min_length=1, max_length=120, description="Default: the member's name"
    )
    color: str = Field(default="#2a9d8f", pattern=COLOR_PATTERN)
    hours: list[WorkingHoursIn] = Field(default_factory=list, max_length=200)


class ProfessionalPatch(_In):
    display_name: str | None = Field(default=None, min_length=1, max_length=120)
    color: str | None = Field(default=None, pattern=COLOR_PATTERN)
    active: bool | None = None


class HoursIn(_In):
    hours: list[WorkingHoursIn] = Field(max_length=200)


class ProfessionalOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    display_name: str
    color: str
    active: bool
    version: int
    hours: list[WorkingHoursOut]


class AppointmentIn(_In):
    patient_id: uuid.UUID
    professional_id: uuid.UUID
    cabinet_id: uuid.UUID
    location_id: uuid.UUID
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = Field(
        default=None, description="Defaults to starts_at + the treatments' durations"
    )
    treatments: list[uuid.UUID] = Field(default_factory=list, max_length=20)
    notes: str | None = Field(default=None, max_length=10_000)


class AppointmentPatch(_In):
    """Move or edit an appointment; absent fields keep their value."""

    professional_id: uuid.UUID | None = None
    cabinet_id: uuid.UUID | None = None
    location_id: uuid.UUID | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    treatments: list[uuid.UUID] | None = Field(default=None, max_length=20)
    notes: str | None = Field(default=None, max_length=10_000)


class TransitionIn(_In):
    status: Status
    reason: str | None = Field(default=None, max_length=500)


class AppointmentOut(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    professional_id: uuid.UUID
    cabinet_id: uuid.UUID
    location_id: uuid.UUID
    starts_at: datetime
    ends_at: datetime
    status: Status
    treatments: list[uuid.UUID]
    notes: str | None = None
    booked_by: uuid.UUID | None
    version: int
    created_at: datetime
    updated_at: datetime


class StatusChangeOut(BaseModel):
    from_status: Status | None
    to_status: Status
    changed_by: uuid.UUID | None
    changed_at: datetime
    reason: str | None


class Slot(BaseModel):
    starts_at: datetime
    ends_at: datetime
    professional_id: uuid.UUID
    cabinet_id: uuid.UUID


class SlotsOut(BaseModel):
    duration_minutes: int
    items: list[Slot]
