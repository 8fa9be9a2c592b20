"""A clinic for the agenda tests: two locations with cabinets, a patient, treatments,
professionals with working hours, and members of every role (one limited to a location)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import insert, select

from dentalpin.modules.catalog.models import items
from dentalpin.modules.locations.models import cabinets, locations
from dentalpin.modules.patients.models import patients
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import add_member, bearer, client, host_of, make_user, session

MONDAY = "2030-01-07"
"""A Monday far enough ahead that free-slot searches never hit "now"; Madrid is UTC+1."""


def at(local: str) -> str:
    """`HH:MM` on MONDAY in Madrid, as an ISO timestamp."""
    return f"{MONDAY}T{local}:00+01:00"


def utc(local: str) -> datetime:
    return datetime.fromisoformat(at(local)).astimezone(UTC)


@dataclass
class World:
    platform: Platform
    tenant: TenantRecord
    loc_a: uuid.UUID
    loc_b: uuid.UUID
    cab_a1: uuid.UUID
    cab_a2: uuid.UUID
    cab_b1: uuid.UUID
    patient: uuid.UUID
    cleaning: uuid.UUID  # 30 minutes
    filling: uuid.UUID  # 45 minutes
    users: dict[str, uuid.UUID] = field(default_factory=dict)
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)
    pros: dict[str, uuid.UUID] = field(default_factory=dict)

    def http(self) -> httpx.AsyncClient:
        return client(self.platform, host_of(self.tenant))

    def booking(self, **overrides: Any) -> dict[str, Any]:
        body = {
            "patient_id": str(self.patient),
            "professional_id": str(self.pros["dentist"]),
            "cabinet_id": str(self.cab_a1),
            "location_id": str(self.loc_a),
            "starts_at": at("09:00"),
            "treatments": [str(self.cleaning)],
        }
        body.update({k: str(v) if isinstance(v, uuid.UUID) else v for k, v in overrides.items()})
        return body


ROLES = ("admin", "dentist", "hygienist", "receptionist", "accountant")
WEEKDAYS = range(1, 6)


def shifts(location: uuid.UUID, *spans: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"location_id": str(location), "weekday": day, "starts_at": start, "ends_at": end}
        for day in WEEKDAYS
        for start, end in spans
    ]


async def make_world(platform: Platform, prefix: str = "ag") -> World:
    tenant = await create_tenant(platform, unique_slug(prefix))
    tag = secrets.token_hex(3)
    async with platform.db.tenant(tenant.scope) as s:
        loc_a = await s.scalar(select(locations.c.id).where(locations.c.is_default))
        if loc_a is None:
            loc_a = await s.scalar(
                insert(locations).values(name="Centro", is_default=True).returning(locations.c.id)
            )
        loc_b = await s.scalar(
            insert(locations).values(name=f"Norte {tag}").returning(locations.c.id)
        )
        cab = {}
        for name, loc in (("A1", loc_a), ("A2", loc_a), ("B1", loc_b)):
            cab[name] = await s.scalar(
                insert(cabinets)
                .values(location_id=loc, name=f"Gabinete {name}")
                .returning(cabinets.c.id)
            )
        patient = await s.scalar(
            insert(patients)
            .values(given_name="Lucía", family_name="Martínez Ruiz")
            .returning(patients.c.id)
        )
        cleaning = await s.scalar(
            insert(items)
            .values(code=f"LIMP-{tag}", name="Limpieza", duration_minutes=30)
            .returning(items.c.id)
        )
        filling = await s.scalar(
            insert(items)
            .values(code=f"OBT-{tag}", name="Obturación", duration_minutes=45)
            .returning(items.c.id)
        )
    world = World(
        platform, tenant, loc_a, loc_b, cab["A1"], cab["A2"], cab["B1"], patient, cleaning, filling
    )
    for role in ROLES:
        user = await make_user(platform, name=f"{role.title()} {tag}")
        await add_member(platform, tenant, user, [role])
        world.users[role] = user.id
        world.tokens[role] = bearer(await session(platform, user, tenant))
    limited = await make_user(platform, name="Front desk Norte")
    await add_member(platform, tenant, limited, ["receptionist"], [str(loc_b)])
    world.users["receptionist_b"] = limited.id
    world.tokens["receptionist_b"] = bearer(await session(platform, limited, tenant))

    async with world.http() as http:
        for role, hours in (
            ("dentist", shifts(loc_a, ("09:00", "14:00"), ("16:00", "20:00"))),
            ("hygienist", [*shifts(loc_a, ("09:00", "14:00")), *shifts(loc_b, ("16:00", "19:00"))]),
        ):
            created = await http.post(
                "/api/v1/agenda/professionals",
                json={
                    "user_id": str(world.users[role]),
                    "display_name": f"Dra. {role.title()}",
                    "hours": hours,
                },
                headers=world.tokens["admin"],
            )
            assert created.status_code == 201, created.text
            world.pros[role] = uuid.UUID(created.json()["id"])
    return world
