"""Events the patients module publishes, in the same transaction as the change (the outbox).

Payloads carry ids and the names of the fields that changed, never the personal data
itself: subscribers that need it read it through the patients API with their own
permissions, and the outbox does not become a second copy of health data.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from dentalpin.platform import Event


class PatientCreated(Event):
    event_name: ClassVar[str] = "patients.patient_created"
    event_version: ClassVar[int] = 1
    patient_id: uuid.UUID
    number: int


class PatientUpdated(Event):
    event_name: ClassVar[str] = "patients.patient_updated"
    event_version: ClassVar[int] = 1
    patient_id: uuid.UUID
    fields: list[str]
    """Names of the fields that changed (`archived_at` when unarchived)."""


class PatientArchived(Event):
    event_name: ClassVar[str] = "patients.patient_archived"
    event_version: ClassVar[int] = 1
    patient_id: uuid.UUID
