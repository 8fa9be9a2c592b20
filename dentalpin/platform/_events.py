"""Publishing events: the outbox in every tenant schema, written in the caller's transaction.

`publish(session, event)` inserts one row into the tenant schema's `_outbox`; a statement
trigger marks the tenant in `platform.event_tenants` (the index the sweep reads, so it
never scans tenants without work), and after commit the session nudges the relay
(`_relay`) through the broker, fire-and-forget. Who receives an event is decided at
delivery time, from the modules installed in the tenant then.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ._db import SCHEMA_NAME, TenantScope
from ._module import TenantRef

EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{1,39}\.[a-z][a-z0-9_]{1,79}$")
E = TypeVar("E", bound="Event")

# Tenant-schema tables the platform owns next to the modules' tables. The leading '_'
# cannot start a module name, so no module table can collide with them.
OUTBOX = "_outbox"
DELIVERIES = "_deliveries"
INBOX = "_inbox"
DELIVERY_STATES = ("pending", "running", "done", "dead", "skipped")


class Event(BaseModel):
    """An event's payload, owned by the module that publishes it.

    Subclasses set `event_name` (`<module>.<what_happened>`) and `event_version`
    (raise it when the payload changes incompatibly; subscribers see both).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_name: ClassVar[str]
    event_version: ClassVar[int] = 1


@dataclass(frozen=True)
class EventContext:
    """What a subscriber gets: the event, and a session confined to the tenant, whose
    transaction also records the event in the inbox (so its effect happens once)."""

    session: AsyncSession
    tenant: TenantRef
    event_id: uuid.UUID
    name: str
    version: int
    payload: dict[str, Any]
    occurred_at: datetime
    attempt: int

    def parse(self, model: type[E]) -> E:
        """The payload as the publisher's model (validated)."""
        return model.model_validate(self.payload)

    @property
    def idempotency_key(self) -> str:
        """A key for effects outside the database (e-mail, tax submissions): the same on
        every redelivery of this event to this subscriber."""
        return f"{self.event_id}:{self.name}"


Handler = Callable[[EventContext], Awaitable[None]]


class MemberRemoved(Event):
    """The platform's own event, in a clinic whose member left (their membership was
    removed): a module that keeps members' user ids (the agenda's professionals) reacts."""

    event_name: ClassVar[str] = "platform.member_removed"
    user_id: uuid.UUID


PLATFORM_EVENTS: tuple[type[Event], ...] = (MemberRemoved,)
"""Published by the platform itself (`publish_from_platform`); modules subscribe to them
like to any module's. No module can be named `platform`, so none can publish these."""

_declared: dict[str, str] = {event.event_name: "platform" for event in PLATFORM_EVENTS}
"""Event name -> publishing module, filled by the registry as it accepts modules."""


def declare_events(module: str, events: tuple[type[Event], ...]) -> list[str]:
    """Check a module's declared events; returns the problems (empty when fine)."""
    problems = []
    for event in events:
        if not (isinstance(event, type) and issubclass(event, Event)):
            problems.append(f"{event!r} in `events` is not a subclass of dentalpin.platform.Event")
            continue
        name = getattr(event, "event_name", None)
        if not isinstance(name, str) or not EVENT_NAME.match(name):
            problems.append(
                f"{event.__name__}.event_name {name!r} is not '<module>.<event>' in lower case"
            )
        elif not name.startswith(f"{module}."):
            problems.append(
                f"{event.__name__} publishes '{name}', which belongs to module "
                f"'{name.split('.')[0]}'; a module publishes only under its own name "
                f"('{module}.{name.split('.', 1)[1]}')"
            )
        elif _declared.get(name, module) != module:
            problems.append(f"event '{name}' is already published by '{_declared[name]}'")
    if not problems:
        for event in events:
            _declared[event.event_name] = module
    return problems


def check_subscriptions(module: str, subscriptions: dict[str, Handler]) -> list[str]:
    problems = []
    for name, handler in subscriptions.items():
        if not EVENT_NAME.match(name):
            problems.append(f"subscription to '{name}': not an event name '<module>.<event>'")
        if not callable(handler):
            problems.append(f"subscription to '{name}': the handler is not callable")
    return problems


async def publish(session: AsyncSession, event: Event) -> uuid.UUID:
    """Write `event` into the tenant's outbox, in the session's current transaction.

    The event exists only if the caller's change commits; after the commit the relay is
    nudged (and the sweep finds it anyway when the broker is unreachable).
    """
    if not isinstance(event, Event):
        raise TypeError(f"publish() takes a dentalpin.platform.Event, not {type(event).__name__}")
    name = type(event).event_name
    if _declared.get(name) == "platform":
        raise TypeError(f"'{name}' is the platform's own event: modules subscribe to it")
    if name not in _declared:
        raise LookupError(
            f"event '{name}' is not declared by any module: list {type(event).__name__} "
            "in your Module's `events`"
        )
    scope = session.info.get("tenant_scope")
    if not isinstance(scope, TenantScope):
        raise RuntimeError("publish() needs a tenant session (TenantDB, ctx.session)")
    event_id = uuid.uuid4()
    await session.execute(
        text(
            f"insert into {OUTBOX} (id, name, version, payload) "
            "values (:id, :name, :version, cast(:payload as jsonb))"
        ),
        {
            "id": event_id,
            "name": name,
            "version": type(event).event_version,
            "payload": event.model_dump_json(),
        },
    )
    session.info.setdefault("published", set()).add(scope)
    return event_id


async def publish_from_platform(
    conn: AsyncConnection, scope: TenantScope, event: Event
) -> uuid.UUID:
    """The platform's `publish`: write one of `PLATFORM_EVENTS` into a tenant's outbox on a
    platform connection, in the caller's transaction (the event exists exactly when the
    change that made it commits). After the commit, `Database.published(scope)` nudges
    the relay; without it the sweep delivers the event all the same."""
    if type(event) not in PLATFORM_EVENTS:
        raise TypeError(f"{type(event).__name__} is not one of the platform's own events")
    if not SCHEMA_NAME.fullmatch(scope.schema):
        raise ValueError(f"'{scope.schema}' is not a platform-generated tenant schema name")
    event_id = uuid.uuid4()
    await conn.execute(
        text(
            f'insert into "{scope.schema}".{OUTBOX} (id, name, version, payload) '
            "values (:id, :name, :version, cast(:payload as jsonb))"
        ),
        {
            "id": event_id,
            "name": type(event).event_name,
            "version": type(event).event_version,
            "payload": event.model_dump_json(),
        },
    )
    return event_id
