"""Request and response bodies of the patients API."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dentalpin.platform import PatchBody

DocumentType = Literal["dni", "nie", "passport"]
Sex = Literal["female", "male", "other"]
AlertKind = Literal["allergy", "medication", "condition"]
Severity = Literal["low", "medium", "high"]
ConsentKind = Literal["data_processing", "communications"]

Name = Annotated[str, Field(min_length=1, max_length=120)]
Short = Annotated[str, Field(max_length=200)]
Phone = Annotated[str, Field(pattern=r"^\+?[0-9 ().-]{6,20}$", examples=["+34 600 123 456"])]
Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
Notes = Annotated[str, Field(max_length=4000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PatientCreate(_Strict):
    given_name: Name
    family_name: Name = Field(description="Both surnames, as on the identity document")
    birth_date: date | None = None
    sex: Sex | None = None
    phone: Phone | None = None
    email: Email | None = None
    document_type: DocumentType | None = None
    document_number: Short | None = Field(
        None, description="DNI and NIE are checked (check letter); passports are free-form"
    )
    guardian_patient_id: uuid.UUID | None = Field(
        None, description="Required for patients under 18: the patient's legal guardian"
    )
    guardian_relationship: Short | None = None
    address_line: Short | None = None
    postal_code: Short | None = None
    city: Short | None = None
    province: Short | None = None
    country: Country = "ES"
    notes: Notes | None = Field(None, description="Administrative notes (not clinical)")


class PatientUpdate(PatchBody):
    not_null = ("given_name", "family_name", "country")
    given_name: Name | None = None
    family_name: Name | None = None
    birth_date: date | None = None
    sex: Sex | None = None
    phone: Phone | None = None
    email: Email | None = None
    document_type: DocumentType | None = None
    document_number: Short | None = None
    guardian_patient_id: uuid.UUID | None = None
    guardian_relationship: Short | None = None
    address_line: Short | None = None
    postal_code: Short | None = None
    city: Short | None = None
    province: Short | None = None
    country: Country | None = None
    notes: Notes | None = None


class AlertItem(BaseModel):
    id: uuid.UUID
    kind: AlertKind
    description: str
    severity: Severity


class AlertSummary(BaseModel):
    """Active medical alerts. Everyone who may see the patient sees the flag (count and
    highest severity); `items` only with the `patients.alert.read` permission."""

    count: int
    highest_severity: Severity | None
    items: list[AlertItem] | None = None


class PatientOut(BaseModel):
    id: uuid.UUID
    number: int
    given_name: str
    family_name: str
    birth_date: date | None
    age: int | None
    is_minor: bool
    sex: Sex | None
    phone: str | None
    email: str | None
    document_type: DocumentType | None
    document_number: str | None
    guardian_patient_id: uuid.UUID | None
    guardian_relationship: str | None
    address_line: str | None
    postal_code: str | None
    city: str | None
    province: str | None
    country: str
    notes: str | None
    archived_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    alerts: AlertSummary


class AlertCreate(_Strict):
    kind: AlertKind
    description: Annotated[str, Field(min_length=1, max_length=1000)]
    severity: Severity = "medium"


class AlertUpdate(PatchBody):
    not_null = ("description", "severity", "resolved")
    description: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    severity: Severity | None = None
    resolved: bool | None = Field(None, description="true resolves the alert, false reopens it")


class AlertOut(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    kind: AlertKind
    description: str
    severity: Severity
    recorded_by: uuid.UUID | None
    resolved_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


class ConsentCreate(_Strict):
    kind: ConsentKind
    granted: bool
    note: Annotated[str, Field(max_length=1000)] | None = None


class ConsentOut(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    kind: ConsentKind
    granted: bool
    recorded_by: uuid.UUID
    recorded_at: datetime
    note: str | None


class ConsentState(BaseModel):
    """The current answer per consent kind (the latest record), and every record."""

    current: dict[ConsentKind, ConsentOut]
    history: list[ConsentOut]


class PatientExport(BaseModel):
    """Everything the patients module holds about one person (GDPR arts. 15 and 20)."""

    exported_at: datetime
    format: str = "dentalpin.patients.export/1"
    patient: dict[str, Any]
    alerts: list[AlertOut]
    consents: list[ConsentOut]
    wards: list[uuid.UUID] = Field(description="Patients whose guardian this patient is")
