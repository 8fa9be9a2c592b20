"""The running platform: settings, database and registry, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._db import Database
from ._registry import Registry
from ._settings import Settings, get_settings


@dataclass
class Platform:
    """What every entry point (web, worker, CLI) builds at start and passes down."""

    settings: Settings
    db: Database
    registry: Registry
    state: dict[str, Any] = field(default_factory=dict)
    """Per-process caches keyed by owner (script directories, DDL images...)."""

    @classmethod
    def create(cls, settings: Settings | None = None, registry: Registry | None = None) -> Platform:
        settings = settings or get_settings()
        return cls(
            settings=settings,
            db=Database.from_settings(settings),
            registry=registry if registry is not None else Registry.discover(),
        )

    async def close(self) -> None:
        await self.db.dispose()
