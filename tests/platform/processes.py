"""Real subprocesses for the tests (celery workers, beats), each with its output in a file,
and the way to cut their database connections from under them."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text


class Process:
    """A celery subprocess with its output in a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], workdir: Path):
        self.name, self.command, self.env, self.workdir = name, command, env, workdir
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command, env=self.env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT
            )

    def start(self, ready: str) -> None:
        offset = len(self.output())  # a restart appends: wait for its own "ready"
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while ready not in self.output()[offset:]:
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"{self.name} not ready:\n{self.output()}"
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


async def terminate_backends(platform: Any, application_name: str) -> int:
    """Cut this database's connections opened under `application_name`, as a restarted
    server or a network cut would; how many were cut."""
    async with platform.db.engine.connect() as conn:
        cut = await conn.scalar(
            text(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                "where datname = current_database() and application_name = :name"
            ),
            {"name": application_name},
        )
    return int(cut or 0)
