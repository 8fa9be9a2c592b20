"""Per-module Alembic lineages, run inside a tenant's schema.

Module authors write ordinary Alembic revisions (`op.create_table("x", ...)`, no
schema). The platform loads each module's script directory once per process and
runs it on a connection whose transaction-local search path is the tenant's
schema, with a version table of the module's own (`alembic_version_<module>`) in
that schema. A revision that needs another module's revision declares it:

    dentalpin_requires = {"patients": "3f2a9c0d1e4b"}
"""

from __future__ import annotations

import asyncio
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform import Module, Registry
from dentalpin.platform._errors import PlatformError

CREATE_EXTENSION = re.compile(r"create\s+extension", re.IGNORECASE)
CHANGE_EXTENSION = re.compile(r"\b(drop|alter)\s+extension\b", re.IGNORECASE)
"""Extensions live in the shared `extensions` schema: dropping or altering one from a module's
revision (run as the schema owner) would change it for every tenant."""
_lock = threading.Lock()
_loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)
_process_lock = threading.Lock()
T = TypeVar("T")


async def run_alembic(conn: AsyncConnection, fn: Callable[[Connection], T]) -> T:
    """Run Alembic-driven work on `conn`, one at a time per process.

    Alembic's `op` and `context` are process-global proxies. Two migrations awaiting
    database I/O would interleave and share them, so the Alembic part is serialised:
    an asyncio lock orders the tasks of one event loop (a thread lock alone would
    block the loop that holds it), and a thread lock orders event loops running in
    different threads. Everything around it (locks, hooks, archives, commits) still
    runs concurrently.
    """

    def exclusive(sync_conn: Connection) -> T:
        with _process_lock:
            return fn(sync_conn)

    loop = asyncio.get_running_loop()
    lock = _loop_locks.setdefault(loop, asyncio.Lock())
    async with lock:
        return await conn.run_sync(exclusive)


class MigrationError(PlatformError):
    problem = "migration-failed"


@dataclass
class Lineage:
    """One module's revisions: its script directory and version table."""

    module: str
    path: Path | None
    script: ScriptDirectory | None = field(default=None, repr=False)

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.module}"

    @property
    def head(self) -> str | None:
        if self.script is None:
            return None
        heads = self.script.get_heads()
        if not heads:
            return None
        if len(heads) != 1:
            raise MigrationError(
                f"module '{self.module}' has {len(heads)} migration heads {heads}; "
                "merge them into one (alembic merge)"
            )
        return heads[0]

    def revisions(self) -> list[Script]:
        return list(self.script.walk_revisions()) if self.script else []

    def requires(self, revision: Script) -> dict[str, str]:
        declared = getattr(revision.module, "dentalpin_requires", None) or {}
        if not isinstance(declared, dict):
            raise MigrationError(
                f"{self.module} revision {revision.revision}: dentalpin_requires must be a dict "
                "of module name to revision id"
            )
        return {str(k): str(v) for k, v in declared.items()}

    def is_at_or_after(self, current: str | None, revision: str) -> bool:
        if self.script is None or current is None:
            return False
        return any(r.revision == revision for r in self.script.iterate_revisions(current, "base"))

    def pending(self, current: str | None, target: str | None = None) -> list[Script]:
        if self.script is None:
            return []
        target = target or self.head
        if target is None or current == target:
            return []
        return list(reversed(list(self.script.iterate_revisions(target, current or "base"))))

    def current(self, connection: Connection) -> str | None:
        if not inspect(connection).has_table(self.version_table):
            return None
        return connection.execute(text(f"select version_num from {self.version_table}")).scalar()

    def upgrade(self, connection: Connection, target: str | None = None) -> str | None:
        """Run the revisions up to `target` (head by default); return the new revision."""
        if self.script is None:
            return None
        destination = target or "head"
        script = self.script

        def steps(rev: Any, _context: Any) -> Any:
            return script._upgrade_revs(destination, rev)

        self._run(connection, steps, destination)
        return self.current(connection)

    def downgrade_to_base(self, connection: Connection) -> None:
        """Run every downgrade, then drop the version table itself."""
        if self.script is None:
            return
        script = self.script

        def steps(rev: Any, _context: Any) -> Any:
            return script._downgrade_revs("base", rev)

        self._run(connection, steps, "base")
        connection.execute(text(f"drop table if exists {self.version_table}"))

    def _run(self, connection: Connection, steps: Any, destination: str) -> None:
        assert self.script is not None
        config = Config()
        config.set_main_option("script_location", str(self.path))
        with (
            refuse_create_extension(connection, self.module),
            EnvironmentContext(config, self.script, fn=steps, destination_rev=destination) as env,
        ):
            env.configure(
                connection=connection,
                version_table=self.version_table,
                transaction_per_migration=False,
            )
            with env.begin_transaction():
                env.run_migrations()


@contextmanager
def refuse_create_extension(connection: Connection, module: str) -> Iterator[None]:
    """Extensions created from a tenant's search path would die with the tenant's schema."""

    def check(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if CREATE_EXTENSION.search(statement):
            raise MigrationError(
                f"module '{module}' ran CREATE EXTENSION in a revision; declare the extension in "
                "the manifest's requires_extensions instead"
            )
        changed = CHANGE_EXTENSION.search(statement)
        if changed:
            raise MigrationError(
                f"module '{module}' ran {changed.group(1).upper()} EXTENSION in a revision; "
                "extensions are shared by every tenant and only an operator may change them"
            )

    event.listen(connection, "before_cursor_execute", check)
    try:
        yield
    finally:
        event.remove(connection, "before_cursor_execute", check)


def load_lineage(module: type[Module] | Module, name: str) -> Lineage:
    path = module.migrations_path()
    if path is None:
        return Lineage(name, None)
    script = ScriptDirectory(str(path), version_locations=[str(path / "versions")])
    return Lineage(name, path, script)


def lineages(registry: Registry, cache: dict[str, Any]) -> dict[str, Lineage]:
    """Every module's lineage, loaded once per process and kept in the platform state."""
    with _lock:
        loaded: dict[str, Lineage] = cache.setdefault("lineages", {})
        for spec in registry:
            if spec.name not in loaded:
                loaded[spec.name] = load_lineage(spec.module, spec.name)
        return loaded


def lint_lineage(lineage: Lineage, registry: Registry) -> list[str]:
    """Problems a module's revisions have, for CI and `dentalpin modules lint`."""
    problems: list[str] = []
    spec = registry.get(lineage.module)
    for revision in lineage.revisions():
        source = Path(revision.path).read_text(encoding="utf-8")
        where = f"{lineage.module} revision {revision.revision} ({Path(revision.path).name})"
        if CREATE_EXTENSION.search(source):
            problems.append(
                f"{where}: runs CREATE EXTENSION; declare it in requires_extensions instead"
            )
        changed = CHANGE_EXTENSION.search(source)
        if changed:
            problems.append(
                f"{where}: runs {changed.group(1).upper()} EXTENSION; extensions are shared by "
                "every tenant and only an operator may change them"
            )
        try:
            requires = lineage.requires(revision)
        except MigrationError as exc:
            problems.append(str(exc))
            continue
        for other, other_revision in requires.items():
            if other not in spec.manifest.depends:
                problems.append(
                    f"{where}: requires {other}@{other_revision}, but '{other}' is not in depends"
                )
                continue
            other_lineage = load_lineage(registry.get(other).module, other)
            if (
                other_lineage.script is None
                or other_lineage.script.get_revision(other_revision) is None
            ):
                problems.append(f"{where}: requires unknown revision {other}@{other_revision}")
    try:
        lineage.head  # noqa: B018 - raises on several heads
    except MigrationError as exc:
        problems.append(str(exc))
    return problems
