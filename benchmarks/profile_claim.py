"""Profile of a spare-schema claim: round trips and time per statement, and the Python side.

    python benchmarks/profile_claim.py [--claims 20] [--cprofile 30]

Creates its own database like the other benchmarks, fills the spare pool, then runs
`create_tenant` claims with SQLAlchemy's cursor events recording every statement (what
was sent and how long until the driver returned) and, separately, under cProfile. Not a
benchmark: profiling slows every call down, so its totals are not comparable with
provision.py's; the statement count and the split between statements and Python are.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchDatabase

from dentalpin.platform._runtime import Platform
from dentalpin.tenants import create_tenant, migrate_platform, sync_catalogue
from dentalpin.tenants._spares import fill_spares


def _shape(statement: str) -> str:
    """One line per statement kind, without the per-tenant names."""
    one = re.sub(r"\s+", " ", statement).strip()
    one = re.sub(r"t_[a-z0-9]{6,24}", "t_X", one)
    return one[:150]


class StatementLog:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self._started: float = 0.0

    def before(self, *_args: Any) -> None:
        self._started = time.perf_counter()

    def after(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        self.calls.append((_shape(statement), time.perf_counter() - self._started))


async def profile(claims: int, cprofile_claims: int) -> None:
    db = await BenchDatabase.create()
    data_dir = Path(tempfile.mkdtemp(prefix="dpbench-"))
    platform: Platform | None = None
    try:
        settings = db.settings(data_dir)
        platform = Platform.create(settings)
        await migrate_platform(platform)
        await sync_catalogue(platform)
        await fill_spares(platform, 5 + claims + cprofile_claims)
        for i in range(5):  # warm-up: caches, prepared statements, the pool
            await create_tenant(platform, f"warm-{i}")

        log = StatementLog()
        engine = platform.db.engine.sync_engine
        event.listen(engine, "before_cursor_execute", log.before)
        event.listen(engine, "after_cursor_execute", log.after)
        totals = []
        per_claim: list[list[tuple[str, float]]] = []
        for i in range(claims):
            log.calls = []
            started = time.perf_counter()
            await create_tenant(platform, f"profiled-{i}")
            totals.append(time.perf_counter() - started)
            per_claim.append(log.calls)
        event.remove(engine, "before_cursor_execute", log.before)
        event.remove(engine, "after_cursor_execute", log.after)

        counts = {len(c) for c in per_claim}
        in_sql = [sum(t for _, t in c) for c in per_claim]
        print(f"claims: {claims}, statements per claim: {sorted(counts)}")
        print(
            f"create_tenant p50 {statistics.median(totals) * 1000:.2f} ms, of which in "
            f"statements (cursor events) p50 {statistics.median(in_sql) * 1000:.2f} ms"
        )
        by_shape: dict[str, list[float]] = defaultdict(list)
        order: list[str] = []
        for call in per_claim:
            for shape, seconds in call:
                if shape not in by_shape:
                    order.append(shape)
                by_shape[shape].append(seconds)
        print("statements in order (p50 ms per call, calls per claim):")
        for shape in order:
            times = by_shape[shape]
            print(
                f"  {statistics.median(times) * 1000:6.2f} ms x{len(times) / claims:.0f}  {shape}"
            )

        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(cprofile_claims):
            await create_tenant(platform, f"cprofiled-{i}")
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(45)
        print(out.getvalue())
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(25)
        print(out.getvalue())
    finally:
        if platform is not None:
            await platform.close()
        await db.drop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--cprofile", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(profile(args.claims, args.cprofile))


if __name__ == "__main__":
    main()
