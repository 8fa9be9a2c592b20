"""The cost of multi-tenancy on the API: the same read/write mix on patients and agenda,
spread over 100 clinics, against the same load on one clinic.

    python benchmarks/api.py [--json] [--tenants 100] [--requests 4000] [--concurrency 16]
                             [--blocks 16] [--warmup 400] [--aa]

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
409), 10% a new patient. Reads see the same rows on both sides: every clinic has the same
seeded day of appointments, bookings go to later days and new patients have a family name
the searches never ask for, so the one clinic of the single side (which takes 100 times
the writes of each multi clinic) does not return longer lists than a multi clinic does.

The two sides alternate in many short blocks (ABBA order), so drift hits both alike; the
result gives the ratio of the totals and the median of the per-pair ratios, and each side's
CPU per request, in this process (client and server) and in its PostgreSQL backends (read
from /proc when the server runs on this machine), which the VM's load moves much less than
throughput. `--aa` runs the method against itself (a second single clinic in place of the
100: the ratio should be ~1.0; how far it strays is the method's noise).
Target: multi-tenant throughput within 10% of single-tenant (multi_rps >= 0.9 x single_rps).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time as clock
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import event, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BenchDatabase,
    cpu_seconds,
    emit,
    git_revision,
    machine,
    p50,
    percentile,
    server_dsn,
    server_version,
)

from dentalpin.app import create_app
from dentalpin.modules.agenda.models import (
    appointment_items,
    appointments,
    professionals,
    working_hours,
)
from dentalpin.modules.catalog.models import items
from dentalpin.modules.locations.models import cabinets, locations
from dentalpin.modules.patients.models import patients
from dentalpin.platform._audit import CLI
from dentalpin.platform._auth import _new_session, memberships_of
from dentalpin.platform._identity import create_user, set_membership
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, create_tenant, migrate_platform, sync_catalogue

TARGET = 0.9
PATIENTS = 50
LANES = 4  # professional + cabinet pairs per clinic that writes book into
SEEDED_PER_LANE = 3  # appointments on DAY per lane, the same in every clinic
GIVEN = ("Lucía", "Javier", "Carmen", "Andrés", "Marta", "Elena", "Pablo", "Nuria")
FAMILY = ("Martínez", "García", "López", "Sánchez", "Pérez", "Gómez", "Ruiz", "Díaz")
NEW_FAMILY = "Nuevo"  # new patients' family name: no search of the mix matches it
DAY = datetime(2031, 3, 3, 8, 0, tzinfo=UTC)  # a Monday; 09:00 in Madrid: reads look here
BOOK_FROM = DAY + timedelta(days=7)  # bookings start a week later: reads never see them


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
    client_cpu_s: float = 0.0
    """CPU of this process (the ASGI app and the client) while the side ran."""
    server_cpu_s: float | None = None
    """CPU of the app's PostgreSQL backends while the side ran (None: not readable)."""
    statements: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def stats(self) -> dict[str, Any]:
        n = len(self.latencies)
        server = None if self.server_cpu_s is None else round(self.server_cpu_s / n * 1000, 2)
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(p50(self.latencies) * 1000, 2),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 2),
            "requests": n,
            "errors": self.errors,
            "client_cpu_ms": round(self.client_cpu_s / n * 1000, 2),
            "server_cpu_ms": server,
            "statements": round(self.statements / n, 2),
        }


class BackendCpu:
    """CPU time of the pool's PostgreSQL backends, read from /proc (server on this host).

    Backends come and go (the pool's overflow connections close when returned), so a
    thread samples every known backend often and keeps its last value; a backend's last
    few milliseconds before it exits may be missed, on both sides alike."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self.readable = True
        self._lock = threading.Lock()
        threading.Thread(target=self._poll, daemon=True).start()

    def watch(self, pid: int) -> None:
        """A new backend (all of its CPU counts, connection set-up included)."""
        now = cpu_seconds(pid)  # it is alive now: unreadable means another machine
        with self._lock:
            if now is None:
                self.readable = False
            self.seen[pid] = now or 0.0

    def total(self) -> float | None:
        self._sample()
        return sum(self.seen.values()) if self.readable else None

    def _sample(self) -> None:
        with self._lock:
            for pid, last in list(self.seen.items()):
                now = cpu_seconds(pid)
                if now is not None:  # None: the backend has exited; its last value stays
                    self.seen[pid] = max(last, now)

    def _poll(self) -> None:
        while True:
            self._sample()
            clock.sleep(0.05)


class Statements:
    """How many statements the app sends (SQLAlchemy's cursor executions, any pool), and
    the first of each tenant-table read with its parameters (for `--replan`)."""

    def __init__(self) -> None:
        self.sent = 0
        self.reads: dict[str, tuple[Any, ...]] = {}
        self.capture = False  # off while the clinics are made (migrations read catalogues)

    def saw(self, sql: str, parameters: Any) -> None:
        self.sent += 1
        if not self.capture:
            return
        head = sql.lstrip()[:7].lower()
        # Reads of module tables: not the platform's, nor the kernel's functions (`_audit`,
        # `_reindex_events` write), nor the scope statement itself.
        if head.startswith("select") and not re.search(r"platform\.|set_config|\b_\w+\(", sql):
            self.reads.setdefault(sql, tuple(parameters or ()))


async def replan(
    url: str, many: list[Clinic], one: Clinic, reads: dict[str, Any]
) -> dict[str, Any]:
    """PostgreSQL's own cost of the tenant reads, apart from Python and the client: each
    transaction sets a clinic's scope and runs every captured read once (prepared, as the
    app does), on one backend, in the same clinic every time or each time in the next of
    the 100; backend CPU per statement from /proc. With custom plans forced too, which
    tells a lost generic plan from the re-analysis."""
    found: dict[str, Any] = {"statements": len(reads)}
    for custom in (False, True):
        for name, clinics in (("single", [one]), ("multi", many)):
            key = f"{name}{'_custom_plans' if custom else ''}_ms_per_statement"
            found[key] = await _replay(url, clinics, reads, custom)
    print(f"replan: backend CPU per tenant read {found}")
    return found


async def _replay(url: str, clinics: list[Clinic], reads: dict[str, Any], custom: bool) -> float:
    settings = {"search_path": ""} | ({"plan_cache_mode": "force_custom_plan"} if custom else {})
    conn = await asyncpg.connect(url, server_settings=settings)
    try:

        async def one_transaction(n: int) -> None:
            scope = clinics[n % len(clinics)].tenant.scope
            async with conn.transaction():
                await conn.execute(
                    "select set_config('search_path', $1, true), set_config('role', $2, true)",
                    scope.search_path,
                    scope.role,
                )
                for sql, parameters in reads.items():
                    await conn.fetch(sql, *parameters)

        for n in range(2 * len(clinics)):  # every clinic's catalogue entries cached first
            await one_transaction(n)
        pid = conn.get_server_pid()
        before = cpu_seconds(pid) or 0.0
        rounds = 1000
        for n in range(rounds):
            await one_transaction(n)
        spent = (cpu_seconds(pid) or 0.0) - before
        return round(spent / (rounds * len(reads)) * 1000, 3)
    finally:
        await conn.close()


def watch_backends(platform: Platform, cpu: BackendCpu, statements: Statements) -> None:
    engine = platform.db.engine.sync_engine

    @event.listens_for(engine, "connect")
    def _remember(dbapi_connection: Any, _record: Any) -> None:
        cpu.watch(dbapi_connection.driver_connection.get_server_pid())

    @event.listens_for(engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_rest: Any) -> None:
        statements.saw(sql, parameters)


async def seed_day(
    s: Any,
    location: uuid.UUID,
    item: uuid.UUID,
    patient_ids: list[uuid.UUID],
    lanes: list[tuple[uuid.UUID, uuid.UUID]],
) -> None:
    """The same appointments on DAY in every clinic: what the day and slot reads return."""
    rows = [
        {
            "patient_id": patient_ids[(n * LANES + k) % len(patient_ids)],
            "professional_id": pro,
            "cabinet_id": room,
            "location_id": location,
            "starts_at": DAY + timedelta(hours=1 + 2 * n),
            "ends_at": DAY + timedelta(hours=1 + 2 * n, minutes=30),
        }
        for n in range(SEEDED_PER_LANE)
        for k, (pro, room) in enumerate(lanes)
    ]
    ids = (await s.execute(insert(appointments).returning(appointments.c.id), rows)).scalars()
    await s.execute(
        insert(appointment_items),
        [{"appointment_id": a, "position": 1, "item_id": item} for a in list(ids)],
    )


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
        lanes = list(zip(pros, rooms, strict=True))
        await seed_day(s, location, item, patient_ids, lanes)
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
        lanes=lanes,
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
        # Each booking takes the next half hour of the next lane: never a clash, and never
        # on DAY, which the reads look at.
        n = clinic.booked
        clinic.booked += 1
        pro, room = clinic.lanes[n % LANES]
        start = BOOK_FROM + timedelta(minutes=30 * (n // LANES))
        body = {
            "patient_id": str(rng.choice(clinic.patients)),
            "professional_id": str(pro),
            "cabinet_id": str(room),
            "location_id": str(clinic.location),
            "starts_at": start.isoformat(),
            "treatments": [str(clinic.item)],
        }
        return "POST", "/api/v1/agenda/appointments", {"json": body}
    body = {"given_name": rng.choice(GIVEN), "family_name": NEW_FAMILY}
    return "POST", "/api/v1/patients/patients", {"json": body}


async def drive(
    http: httpx.AsyncClient,
    clinics: list[Clinic],
    requests: int,
    concurrency: int,
    seed: int,
    cpu: BackendCpu | None = None,
    statements: Statements | None = None,
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

    sent_before = statements.sent if statements else 0
    server_before = cpu.total() if cpu else None
    client_before = clock.process_time()
    began = clock.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    side.seconds = clock.perf_counter() - began
    side.client_cpu_s = clock.process_time() - client_before
    side.statements = (statements.sent if statements else 0) - sent_before
    server_after = cpu.total() if cpu else None
    if server_before is not None and server_after is not None:
        side.server_cpu_s = server_after - server_before
    return side


def merge(parts: list[Side]) -> Side:
    merged = Side()
    for part in parts:
        merged.latencies += part.latencies
        merged.seconds += part.seconds
        merged.errors += part.errors
        merged.client_cpu_s += part.client_cpu_s
        merged.statements += part.statements
        if part.server_cpu_s is not None:
            merged.server_cpu_s = (merged.server_cpu_s or 0.0) + part.server_cpu_s
    return merged


def pair_ratios(multi: list[Side], single: list[Side]) -> dict[str, float]:
    """Throughput ratio of each pair of adjacent blocks: drift between pairs cancels out."""
    ratios = sorted(m.rps / s.rps for m, s in zip(multi, single, strict=True))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {
        "median": round(statistics.median(ratios), 3),
        "q1": round(quartiles[0], 3),
        "q3": round(quartiles[-1], 3),
        "min": round(ratios[0], 3),
        "max": round(ratios[-1], 3),
        "below_target": sum(r < TARGET for r in ratios),
    }


async def run(
    tenants: int,
    requests: int,
    concurrency: int,
    blocks: int,
    warmup: int,
    aa: bool,
    with_replan: bool,
) -> dict[str, Any]:
    db = await BenchDatabase.create()
    data_dir = Path(tempfile.mkdtemp(prefix="dpbench-"))
    platform: Platform | None = None
    try:
        settings = db.settings(data_dir, redis_url=None)
        platform = Platform.create(settings)
        cpu, statements = BackendCpu(), Statements()
        watch_backends(platform, cpu, statements)
        await migrate_platform(platform)
        await sync_catalogue(platform)
        started = clock.perf_counter()
        many = [await make_clinic(platform, n) for n in range(tenants)]
        one = [await make_clinic(platform, tenants)]
        if aa:  # the method against itself: a second single clinic plays "multi"
            many = [await make_clinic(platform, tenants + 1)]
        print(f"{len(many) + 1} clinics ready in {clock.perf_counter() - started:.1f} s")
        statements.capture = True
        app = create_app(platform)
        transport = httpx.ASGITransport(app=app, client=("10.9.9.9", 4321))
        sides = {"multi": many, "single": one}
        parts: dict[str, list[Side]] = {"multi": [], "single": []}
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            # Warm-up: the same number of requests per side, alternating, so pools, statement
            # caches and the interpreter are warmed by both.
            for chunk in range(4):
                for name in ("multi", "single") if chunk % 2 == 0 else ("single", "multi"):
                    await drive(http, sides[name], warmup // 4, concurrency, chunk)
            per_block = requests // blocks
            for block in range(blocks):
                order = ("multi", "single") if block % 2 == 0 else ("single", "multi")
                for name in order:
                    part = await drive(
                        http, sides[name], per_block, concurrency, 100 + block, cpu, statements
                    )
                    parts[name].append(part)
                    print(f"block {block + 1}/{blocks} {name}: {part.stats()}")
        replanned = (
            await replan(server_dsn(db.name), many, one[0], statements.reads)
            if with_replan
            else None
        )
        multi, single = merge(parts["multi"]).stats(), merge(parts["single"]).stats()
        ratio = multi["rps"] / single["rps"]
        blockwise = pair_ratios(parts["multi"], parts["single"])
        print(
            f"multi {multi['rps']} req/s (p50 {multi['p50_ms']} ms, p99 {multi['p99_ms']} ms) vs "
            f"single {single['rps']} req/s (p50 {single['p50_ms']} ms, p99 {single['p99_ms']} ms): "
            f"{ratio:.3f}x, target >= {TARGET}; per block pair: median {blockwise['median']}, "
            f"quartiles {blockwise['q1']}-{blockwise['q3']}; CPU per request (client + server): "
            f"multi {multi['client_cpu_ms']} + {multi['server_cpu_ms']} ms, "
            f"single {single['client_cpu_ms']} + {single['server_cpu_ms']} ms"
        )
        return {
            "benchmark": "api",
            "tenants": 1 if aa else tenants,
            "aa": aa,
            "requests_per_side": requests,
            "concurrency": concurrency,
            "blocks": blocks,
            "warmup_per_side": warmup,
            "multi_rps": multi["rps"],
            "single_rps": single["rps"],
            "multi_p50_ms": multi["p50_ms"],
            "single_p50_ms": single["p50_ms"],
            "multi_p99_ms": multi["p99_ms"],
            "single_p99_ms": single["p99_ms"],
            "multi_errors": multi["errors"],
            "single_errors": single["errors"],
            "multi_client_cpu_ms": multi["client_cpu_ms"],
            "single_client_cpu_ms": single["client_cpu_ms"],
            "multi_server_cpu_ms": multi["server_cpu_ms"],
            "single_server_cpu_ms": single["server_cpu_ms"],
            "multi_statements_per_request": multi["statements"],
            "single_statements_per_request": single["statements"],
            "ratio": round(ratio, 3),
            "block_ratios": blockwise,
            "replan": replanned,
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
    parser.add_argument("--blocks", type=int, default=16, help="alternating blocks per side")
    parser.add_argument("--warmup", type=int, default=400, help="warm-up requests per side")
    parser.add_argument(
        "--aa", action="store_true", help="A/A check: a second single clinic plays 'multi'"
    )
    parser.add_argument(
        "--replan",
        action="store_true",
        help="then replay the tenant reads on one backend: same clinic vs 100 (PostgreSQL only)",
    )
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.tenants,
            args.requests,
            args.concurrency,
            args.blocks,
            args.warmup,
            args.aa,
            args.replan,
        )
    )
    emit(result, args.json)


if __name__ == "__main__":
    main()
