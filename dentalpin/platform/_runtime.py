"""The running platform: settings, database and registry, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._db import Database
from ._registry import Registry
from ._settings import Settings, get_settings

if TYPE_CHECKING:
    from ._nudge import CeleryNudge, InProcessNudge


@dataclass
class Platform:
    """What every entry point (web, worker, CLI) builds at start and passes down."""

    settings: Settings
    db: Database
    registry: Registry
    state: dict[str, Any] = field(default_factory=dict)
    """Per-process caches keyed by owner (script directories, DDL images...)."""
    nudge: CeleryNudge | InProcessNudge | None = field(init=False, default=None)
    """What a commit that published events calls (`_nudge`)."""

    def __post_init__(self) -> None:
        from ._nudge import make_nudge

        self.nudge = make_nudge(self)
        self.db.on_published = self.nudge

    @classmethod
    def create(cls, settings: Settings | None = None, registry: Registry | None = None) -> Platform:
        settings = settings or get_settings()
        return cls(
            settings=settings,
            db=Database.from_settings(settings),
            registry=registry if registry is not None else Registry.discover(),
        )

    async def close(self) -> None:
        if self.nudge is not None:
            self.nudge.close()
        await self.db.dispose()
