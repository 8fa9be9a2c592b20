"""What the benchmarks share: a database of their own, a role prefix of their own, output.

Each benchmark creates its database and drops it at the end, with every role carrying
its prefix (roles are cluster-wide, so dropping the database is not enough).
"""

from __future__ import annotations

import json
import os
import platform as host
import secrets
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_dsn(database: str = "postgres") -> str:
    raw = os.environ.get("DATABASE_URL") or DEFAULT_SERVER
    url = make_url(raw).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


@dataclass
class BenchDatabase:
    """`dpbench_<token>` with tenant roles `dpb<token>_...`, removed by `drop()`."""

    name: str
    prefix: str

    @classmethod
    async def create(cls) -> BenchDatabase:
        token = secrets.token_hex(4)
        db = cls(f"dpbench_{token}", f"dpb{token}_")
        conn = await asyncpg.connect(server_dsn())
        try:
            await conn.execute(f'create database "{db.name}"')
        finally:
            await conn.close()
        return db

    @property
    def url(self) -> str:
        return server_dsn(self.name)

    def settings(self, data_dir: Path, **changes: Any) -> Any:
        """Platform settings on this database and role prefix (test environment, Redis
        from REDIS_URL when set), with `changes` on top."""
        from dentalpin.platform._settings import Settings

        values: dict[str, Any] = {
            "database_url": self.url,
            "redis_url": os.environ.get("REDIS_URL"),
            "data_dir": data_dir,
            "role_prefix": self.prefix,
            "environment": "test",
        }
        return Settings(**(values | changes))

    async def drop(self) -> None:
        conn = await asyncpg.connect(server_dsn())
        try:
            await conn.execute(f'drop database if exists "{self.name}" with (force)')
            roles = await conn.fetch(
                "select rolname from pg_roles where rolname like $1", self.prefix + "%"
            )
            for role in roles:
                await conn.execute(f'drop role if exists "{role["rolname"]}"')
        finally:
            await conn.close()


def write_module(
    site: Path, package: str, entry: str, source: str, revisions: dict[str, str]
) -> Path:
    """A module package discoverable like an installed distribution (a `.dist-info` with
    its entry point, under `site`, which goes on `PYTHONPATH`); returns its versions dir.
    `entry` is `name = package:Class`; `revisions` maps file names to their source."""
    versions = site / package / "migrations" / "versions"
    versions.mkdir(parents=True)
    (site / package / "__init__.py").write_text(textwrap.dedent(source))
    for name, text in revisions.items():
        (versions / name).write_text(text)
    dist = site / f"{package}-1.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0.0\n")
    (dist / "entry_points.txt").write_text(f"[dentalpin.modules]\n{entry}\n")
    return versions


class Worker:
    """A `celery worker` subprocess on `queues`, returned once it consumes (its start-up is
    no part of any timing); output in `log`."""

    def __init__(self, env: dict[str, str], log: Path, queues: str, processes: int) -> None:
        self.log = log
        command = [sys.executable, "-m", "celery", "-A", "dentalpin.platform._celery:app"]
        command += ["worker", "-Q", queues, "-c", str(processes), "--pool", "prefork"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        command += ["-n", f"bench-{secrets.token_hex(3)}@%h", "--loglevel=INFO"]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "ready." not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a small sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def p50(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": memory_gb,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": host.platform(),
    }


async def server_version() -> str:
    conn = await asyncpg.connect(server_dsn())
    try:
        return str(await conn.fetchval("show server_version"))
    finally:
        await conn.close()


def git_revision() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def emit(result: dict[str, Any], as_json: bool) -> None:
    """With --json, the last line printed is one JSON object."""
    if as_json:
        sys.stdout.flush()
        print(json.dumps(result, default=str), flush=True)


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process on this host, from /proc; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    """The direct children of a process on this host (e.g. a worker's pool processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def local_tcp_ports(pid: int) -> set[int]:
    """The local ports of a process's TCP sockets on this host (from /proc), to tell which
    PostgreSQL backends serve it (`pg_stat_activity.client_port`)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
