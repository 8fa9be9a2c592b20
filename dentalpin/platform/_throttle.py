"""Login throttling: growing delays per account and per client address, never a lockout.

After `free` failures within `window_s`, each further failure makes the key wait
2^(failures - free) seconds (capped) before the next attempt is even checked; the wait
is answered 429 with Retry-After. A success clears the account's counter (not the
address's: an attacker must not reset it by logging into an account of their own).
The rows are locked for the whole attempt, so concurrent guesses queue up and are
counted one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ._errors import PlatformError
from ._tables import auth_throttle


@dataclass(frozen=True)
class Rule:
    free: int
    cap_s: int
    window_s: int = 900
    base_s: int = 1
    """The first delay past the free attempts; each further attempt doubles it."""

    def delay(self, failures: int) -> int:
        if failures < self.free:
            return 0
        return int(min(self.base_s * 2 ** (failures - self.free), self.cap_s))


ACCOUNT = Rule(free=5, cap_s=300)
ADDRESS = Rule(free=20, cap_s=900)


class Throttled(PlatformError):
    status = 429
    problem = "too-many-attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed attempts; wait {retry_after} second(s) before trying again"
        )
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


def account_key(email: str) -> str:
    return f"account:{email.strip().lower()[:320]}"


def address_key(ip: str | None) -> str:
    return f"address:{ip or 'unknown'}"


async def _now(conn: AsyncConnection) -> datetime:
    value: datetime = (await conn.execute(select(func.now()))).scalar_one()
    return value


async def check(conn: AsyncConnection, keys: dict[str, Rule]) -> None:
    """Lock the keys' rows (in key order: no deadlocks) and refuse while one is waiting."""
    now = await _now(conn)
    waits = []
    for key in sorted(keys):
        await conn.execute(pg_insert(auth_throttle).values(key=key).on_conflict_do_nothing())
        row = (
            await conn.execute(
                select(auth_throttle).where(auth_throttle.c.key == key).with_for_update()
            )
        ).one()
        if row.blocked_until is not None and row.blocked_until > now:
            waits.append(math.ceil((row.blocked_until - now).total_seconds()))
    if waits:
        raise Throttled(max(1, max(waits)))


async def failed(conn: AsyncConnection, keys: dict[str, Rule]) -> None:
    now = await _now(conn)
    for key, rule in sorted(keys.items()):
        row = (await conn.execute(select(auth_throttle).where(auth_throttle.c.key == key))).one()
        stale = row.last_failure_at is None or row.last_failure_at < now - timedelta(
            seconds=rule.window_s
        )
        failures = 1 if stale else row.failures + 1
        wait = rule.delay(failures)
        await conn.execute(
            update(auth_throttle)
            .where(auth_throttle.c.key == key)
            .values(
                failures=failures,
                last_failure_at=now,
                blocked_until=now + timedelta(seconds=wait) if wait else None,
            )
        )


async def succeeded(conn: AsyncConnection, key: str) -> None:
    await conn.execute(delete(auth_throttle).where(auth_throttle.c.key == key))
