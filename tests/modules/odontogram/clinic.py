"""A clinic for the odontogram and treatment plan tests: patients, catalog treatments, and
a member of every role with a token."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import insert

from dentalpin.modules.catalog.models import items
from dentalpin.modules.patients.models import patients
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import add_member, bearer, client, host_of, make_user, session

ROLES = ("admin", "dentist", "hygienist", "assistant", "receptionist", "accountant")
CHART = "/api/v1/odontogram"
PLANS = "/api/v1/treatment_plans"


@dataclass
class Clinic:
    platform: Platform
    tenant: TenantRecord
    patient: uuid.UUID
    other_patient: uuid.UUID
    treatments: dict[str, uuid.UUID]
    """filling (45.50 €), crown (420 €), extraction (60 €), cleaning (50 €)."""
    users: dict[str, uuid.UUID] = field(default_factory=dict)
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    def http(self) -> httpx.AsyncClient:
        return client(self.platform, host_of(self.tenant))

    def as_(self, role: str) -> dict[str, str]:
        return self.tokens[role]

    def chart(self, patient: uuid.UUID | None = None) -> str:
        return f"{CHART}/patients/{patient or self.patient}"

    async def entry(
        self, http: httpx.AsyncClient, role: str = "dentist", **body: Any
    ) -> httpx.Response:
        patient = body.pop("patient", None)
        body = {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in body.items()}
        return await http.post(f"{self.chart(patient)}/entries", json=body, headers=self.as_(role))


TREATMENTS = {
    "filling": ("Obturación composite", Decimal("45.50")),
    "crown": ("Corona de zirconio", Decimal("420.00")),
    "extraction": ("Exodoncia simple", Decimal("60.00")),
    "cleaning": ("Limpieza bucal", Decimal("50.00")),
}


async def make_clinic(
    platform: Platform, prefix: str = "chart", modules: tuple[str, ...] = ("treatment_plans",)
) -> Clinic:
    tenant = await create_tenant(platform, unique_slug(prefix), modules=list(modules))
    tag = secrets.token_hex(3)
    async with platform.db.tenant(tenant.scope) as s:
        ids = []
        for given, family in (("Lucía", "Martínez Ruiz"), ("Jorge", "Sanz Gil")):
            ids.append(
                await s.scalar(
                    insert(patients)
                    .values(given_name=given, family_name=family)
                    .returning(patients.c.id)
                )
            )
        treatments = {}
        for key, (name, price) in TREATMENTS.items():
            treatments[key] = await s.scalar(
                insert(items)
                .values(code=f"{key[:4].upper()}-{tag}", name=name, default_price=price)
                .returning(items.c.id)
            )
    clinic = Clinic(platform, tenant, ids[0], ids[1], treatments)
    for role in ROLES:
        user = await make_user(platform, name=f"{role.title()} {tag}")
        await add_member(platform, tenant, user, [role])
        clinic.users[role] = user.id
        clinic.tokens[role] = bearer(await session(platform, user, tenant))
    return clinic
