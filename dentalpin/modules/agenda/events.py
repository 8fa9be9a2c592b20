"""Events the agenda publishes, in the same transaction as the change (the outbox).

Every appointment event carries the same small payload: which appointment, for whom,
with whom, where and when, and its status after the change. Subscribers (reminders,
billing, treatment plans) react without reading the agenda's tables.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

from dentalpin.platform import Event


class AppointmentEvent(Event):
    event_name: ClassVar[str]
    appointment_id: uuid.UUID
    patient_id: uuid.UUID
    professional_id: uuid.UUID
    cabinet_id: uuid.UUID
    location_id: uuid.UUID
    starts_at: datetime
    ends_at: datetime
    status: str
    changed_by: uuid.UUID | None = None


class AppointmentBooked(AppointmentEvent):
    event_name: ClassVar[str] = "agenda.appointment_booked"


class AppointmentRescheduled(AppointmentEvent):
    """Moved in time, or to another professional, cabinet or location."""

    event_name: ClassVar[str] = "agenda.appointment_rescheduled"
    previous_starts_at: datetime
    previous_ends_at: datetime


class _StatusEvent(AppointmentEvent):
    event_name: ClassVar[str]
    from_status: str
    reason: str | None = None


class AppointmentConfirmed(_StatusEvent):
    event_name: ClassVar[str] = "agenda.appointment_confirmed"


class AppointmentCheckedIn(_StatusEvent):
    event_name: ClassVar[str] = "agenda.appointment_checked_in"


class AppointmentStarted(_StatusEvent):
    event_name: ClassVar[str] = "agenda.appointment_started"


class AppointmentCompleted(_StatusEvent):
    event_name: ClassVar[str] = "agenda.appointment_completed"


class AppointmentCancelled(_StatusEvent):
    event_name: ClassVar[str] = "agenda.appointment_cancelled"


class AppointmentNoShow(_StatusEvent):
    event_name: ClassVar[str] = "agenda.appointment_no_show"


STATUS_EVENTS: dict[str, type[_StatusEvent]] = {
    "confirmed": AppointmentConfirmed,
    "checked_in": AppointmentCheckedIn,
    "in_treatment": AppointmentStarted,
    "completed": AppointmentCompleted,
    "cancelled": AppointmentCancelled,
    "no_show": AppointmentNoShow,
}
"""The event each status change publishes (the status the appointment reached)."""

EVENTS: tuple[type[Event], ...] = (
    AppointmentBooked,
    AppointmentRescheduled,
    *STATUS_EVENTS.values(),
)
