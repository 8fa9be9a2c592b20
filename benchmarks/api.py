"""The cost of multi-tenancy on the API: the same read/write mix on patients and agenda,
spread over 100 clinics, against the same load on one clinic.

    python benchmarks/api.py [--json] [--tenants 100] [--requests 4000] [--concurrency 16]

Creates its own database (on DATABASE_URL's server, default
postgresql://postgres@127.0.0.1:5432/postgres) and drops it, with its roles, at the end.

Both sides run the same code path: HTTP requests through the ASGI app in this process
(httpx's ASGI transport), each with a member's Bearer token and the clinic's host name,
so host resolution, token verification, the permission load, the tenant transaction
(search path and role), the module's work and the events it publishes all happen for
every request. Only the clinic a request goes to differs: a random one of `--tenants`
clinics (multi) or always the same one (single). Each clinic has the same data.

The mix (per request, drawn at random): 30% patient search, 20% a patient by id, 20% a
day of appointments, 5% free slots, 15% booking an appointment (in a free lane, so no
409), 10% a new patient. The two sides alternate in blocks, so drift hits both alike.
Target: multi-tenant throughput within 10% of single-tenant (multi_rps >= 0.9 x single_rps).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time as clock
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchDatabase, emit, git_revision, machine, p50, percentile, server_version

from dentalpin.app import create_app
from dentalpin.modules.agenda.models import professionals, working_hours
from dentalpin.modules.catalog.models import items
from dentalpin.modules.locations.models import cabinets, locations
from dentalpin.modules.patients.models import patients
from dentalpin.platform._audit import CLI
from dentalpin.platform._auth import _new_session, memberships_of
from dentalpin.platform._identity import create_user, set_membership
from dentalpin.platform._runtime import Platform
from dentalpin.platform._settings import Settings
from dentalpin.tenants import TenantRecord, create_tenant, migrate_platform, sync_catalogue

TARGET = 0.9
PATIENTS = 50
LANES = 4  # professional + cabinet pairs per clinic that writes book into
GIVEN = ("Lucía", "Javier", "Carmen", "Andrés", "Marta", "Elena", "Pablo", "Nuria")
FAMILY = ("Martínez", "García", "López", "Sánchez", "Pérez", "Gómez", "Ruiz", "Díaz")
DAY = datetime(2031, 3, 3, 8, 0, tzinfo=UTC)  # a Monday; 09:00 in Madrid


@dataclass
class Clinic:
    tenant: TenantRecord
    headers: dict[str, str]
    location: uuid.UUID
    item: uuid.UUID
    patients: list[uuid.UUID]
    lanes: list[tuple[uuid.UUID, uuid.UUID]]
    booked: int = 0


@dataclass
class Side:
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0

    def stats(self) -> dict[str, float]:
        return {
            "rps": round(len(self.latencies) / self.seconds, 1),
            "p50_ms": round(p50(self.latencies) * 1000, 2),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 2),
            "requests": len(self.latencies),
            "errors": self.errors,
        }


async def make_clinic(platform: Platform, n: int) -> Clinic:
    tenant = await create_tenant(platform, f"bench-{n:03d}-{uuid.uuid4().hex[:4]}")
    async with platform.db.tenant(tenant.scope) as s:
        location = await s.scalar(select(locations.c.id).where(locations.c.is_default))
        rooms = [
            await s.scalar(
                insert(cabinets)
                .values(location_id=location, name=f"Gabinete {k}")
                .returning(cabinets.c.id)
            )
            for k in range(LANES)
        ]
        item = await s.scalar(
            insert(items)
            .values(code="LIMP", name="Limpieza", duration_minutes=30)
            .returning(items.c.id)
        )
        rng = random.Random(n)
        ids = (
            await s.execute(
                insert(patients).returning(patients.c.id),
                [
                    {"given_name": rng.choice(GIVEN), "family_name": rng.choice(FAMILY)}
                    for _ in range(PATIENTS)
                ],
            )
        ).scalars()
        patient_ids = list(ids)
        pros = []
        for k in range(LANES):
            pro = await s.scalar(
                insert(professionals)
                .values(user_id=uuid.uuid4(), display_name=f"Dr. {k}")
                .returning(professionals.c.id)
            )
            await s.execute(
                insert(working_hours),
                [
                    {
                        "professional_id": pro,
                        "location_id": location,
                        "weekday": day,
                        "starts_at": time(9),
                        "ends_at": time(20),
                    }
                    for day in range(1, 6)
                ],
            )
            pros.append(pro)
    async with platform.db.engine.begin() as conn:
        user = await create_user(
            conn, f"dentist-{tenant.slug}@example.es", "Dentist", None, ctx=CLI
        )
        await set_membership(conn, platform.registry, tenant.id, user.id, ["dentist"], [], ctx=CLI)
        membership = next(
            m for m in await memberships_of(conn, user.id) if m.tenant_id == tenant.id
        )
        pair = await _new_session(platform, conn, user.id, membership, mfa=True)
    return Clinic(
        tenant=tenant,
        headers={
            "authorization": f"Bearer {pair.access_token}",
            "host": f"{tenant.slug}.localhost",
        },
        location=location,
        item=item,
        patients=patient_ids,
        lanes=list(zip(pros, rooms, strict=True)),
    )


def request_for(clinic: Clinic, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    """(method, path, httpx keyword arguments) for one request of the mix."""
    draw = rng.random()
    day = {"starts_from": DAY.isoformat(), "starts_before": (DAY + timedelta(days=1)).isoformat()}
    if draw < 0.30:
        return (
            "GET",
            "/api/v1/patients/patients",
            {"params": {"q": rng.choice(FAMILY)[:4], "limit": 20}},
        )
    if draw < 0.50:
        return "GET", f"/api/v1/patients/patients/{rng.choice(clinic.patients)}", {}
    if draw < 0.70:
        return "GET", "/api/v1/agenda/appointments", {"params": {**day, "limit": 50}}
    if draw < 0.75:
        params = {
            "location_id": str(clinic.location),
            "date_from": DAY.date().isoformat(),
            "date_to": DAY.date().isoformat(),
            "item_id": str(clinic.item),
            "limit": 20,
        }
        return "GET", "/api/v1/agenda/slots", {"params": params}
    if draw < 0.90:
        # Each booking takes the next half hour of the next lane: never a clash.
        n = clinic.booked
        clinic.booked += 1
        pro, room = clinic.lanes[n % LANES]
        start = DAY + timedelta(minutes=30 * (n // LANES))
        body = {
            "patient_id": str(rng.choice(clinic.patients)),
            "professional_id": str(pro),
            "cabinet_id": str(room),
            "location_id": str(clinic.location),
            "starts_at": start.isoformat(),
            "treatments": [str(clinic.item)],
        }
        return "POST", "/api/v1/agenda/appointments", {"json": body}
    body = {"given_name": rng.choice(GIVEN), "family_name": rng.choice(FAMILY)}
    return "POST", "/api/v1/patients/patients", {"json": body}


async def drive(
    http: httpx.AsyncClient, clinics: list[Clinic], requests: int, concurrency: int, seed: int
) -> Side:
    side = Side()
    rng = random.Random(seed)
    queue = [(rng.choice(clinics), rng.random()) for _ in range(requests)]

    async def worker() -> None:
        local = random.Random(rng.random())
        while queue:
            clinic, _ = queue.pop()
            method, path, extra = request_for(clinic, local)
            began = clock.perf_counter()
            response = await http.request(method, path, headers=clinic.headers, **extra)
            side.latencies.append(clock.perf_counter() - began)
            if response.status_code >= 400:
                side.errors += 1

    began = clock.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    side.seconds = clock.perf_counter() - began
    return side


def merge(parts: list[Side]) -> Side:
    merged = Side()
    for part in parts:
        merged.latencies += part.latencies
        merged.seconds += part.seconds
        merged.errors += part.errors
    return merged


async def run(tenants: int, requests: int, concurrency: int, blocks: int) -> dict[str, Any]:
    db = await BenchDatabase.create()
    data_dir = Path(tempfile.mkdtemp(prefix="dpbench-"))
    platform: Platform | None = None
    try:
        settings = Settings(
            database_url=db.url,
            redis_url=None,
            data_dir=data_dir,
            role_prefix=db.prefix,
            environment="test",
        )
        platform = Platform.create(settings)
        await migrate_platform(platform)
        await sync_catalogue(platform)
        started = clock.perf_counter()
        many = [await make_clinic(platform, n) for n in range(tenants)]
        one = [await make_clinic(platform, tenants)]
        print(f"{tenants + 1} clinics ready in {clock.perf_counter() - started:.1f} s")
        app = create_app(platform)
        transport = httpx.ASGITransport(app=app, client=("10.9.9.9", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            await drive(http, many, 200, concurrency, 1)  # warm-up: pools, caches, JIT paths
            await drive(http, one, 200, concurrency, 2)
            multi_parts, single_parts = [], []
            per_block = requests // blocks
            for block in range(blocks):
                pair = [("multi", many), ("single", one)]
                for name, clinics in pair if block % 2 == 0 else pair[::-1]:
                    part = await drive(http, clinics, per_block, concurrency, 100 + block)
                    (multi_parts if name == "multi" else single_parts).append(part)
                    print(f"block {block + 1}/{blocks} {name}: {part.stats()}")
        multi, single = merge(multi_parts).stats(), merge(single_parts).stats()
        ratio = multi["rps"] / single["rps"]
        print(
            f"multi {multi['rps']} req/s (p50 {multi['p50_ms']} ms, p99 {multi['p99_ms']} ms) vs "
            f"single {single['rps']} req/s (p50 {single['p50_ms']} ms, p99 {single['p99_ms']} ms): "
            f"{ratio:.3f}x, target >= {TARGET}"
        )
        return {
            "benchmark": "api",
            "tenants": tenants,
            "requests_per_side": requests,
            "concurrency": concurrency,
            "multi_rps": multi["rps"],
            "single_rps": single["rps"],
            "multi_p50_ms": multi["p50_ms"],
            "single_p50_ms": single["p50_ms"],
            "multi_p99_ms": multi["p99_ms"],
            "single_p99_ms": single["p99_ms"],
            "multi_errors": multi["errors"],
            "single_errors": single["errors"],
            "ratio": round(ratio, 3),
            "target_ratio": TARGET,
            "met": ratio >= TARGET,
            "machine": machine(),
            "postgres": await server_version(),
            "git": git_revision(),
        }
    finally:
        if platform is not None:
            drain = getattr(platform.nudge, "drain", None)
            if drain is not None:  # in-process event deliveries still under way
                await drain()
            await platform.close()
        await db.drop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--requests", type=int, default=4000, help="per side")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per side")
    args = parser.parse_args()
    result = asyncio.run(run(args.tenants, args.requests, args.concurrency, args.blocks))
    emit(result, args.json)


if __name__ == "__main__":
    main()
