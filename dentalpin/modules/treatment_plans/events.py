"""Events treatment_plans publishes (payloads are small: ids and a few values)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import ClassVar

from dentalpin.platform import Event


class PlanStatusChanged(Event):
    """A plan moved along its status flow (proposed, accepted, in_progress, completed,
    rejected, cancelled, or back to draft for a revision)."""

    event_name: ClassVar[str] = "treatment_plans.plan_status_changed"
    event_version: ClassVar[int] = 1
    plan_id: uuid.UUID
    patient_id: uuid.UUID
    from_status: str
    to_status: str


class QuoteIssued(Event):
    """A proposal issued quote version `number` (an immutable snapshot)."""

    event_name: ClassVar[str] = "treatment_plans.quote_issued"
    event_version: ClassVar[int] = 1
    plan_id: uuid.UUID
    patient_id: uuid.UUID
    quote_id: uuid.UUID
    number: int
    total: Decimal


class ItemCompleted(Event):
    """A plan item was performed: the odontogram charts it on `teeth` (none for a
    whole-mouth treatment such as a cleaning)."""

    event_name: ClassVar[str] = "treatment_plans.item_completed"
    event_version: ClassVar[int] = 1
    plan_id: uuid.UUID
    item_id: uuid.UUID
    patient_id: uuid.UUID
    catalog_item_id: uuid.UUID
    teeth: list[int]
    surfaces: list[str]
    chart_condition: str | None
    completed_at: datetime
    completed_by: uuid.UUID | None


EVENTS = (PlanStatusChanged, QuoteIssued, ItemCompleted)
