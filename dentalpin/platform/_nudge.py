"""The nudge: after a commit that published events, ask the relay to deliver them now.

Fire-and-forget by design. The outbox already holds the events and the sweep finds them
without help, so a nudge may be lost; what it must never do is slow down or fail the
request that published. The Celery nudge therefore runs on a small thread pool, with a
short socket timeout, behind a circuit breaker: after one failure, commits skip the
broker entirely for `events_breaker_cooldown_s`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ._db import TenantScope

if TYPE_CHECKING:
    from ._runtime import Platform

log = logging.getLogger(__name__)

DELIVER_TASK = "dentalpin.events.deliver"
SWEEP_TASK = "dentalpin.events.sweep"
EVENTS_QUEUE = "events"
MAX_IN_FLIGHT = 1000


class CircuitBreaker:
    """Closed until a call fails; then open (calls skipped) for `cooldown_s`."""

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._open_until = 0.0
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self._clock() < self._open_until

    def failed(self) -> None:
        with self._lock:
            self._open_until = self._clock() + self.cooldown_s

    def succeeded(self) -> None:
        with self._lock:
            self._open_until = 0.0


class CeleryNudge:
    """Sends `dentalpin.events.deliver(<schema>)` to the `events` queue, off the caller."""

    def __init__(self, platform: Platform) -> None:
        self.settings = platform.settings
        self.breaker = CircuitBreaker(platform.settings.events_breaker_cooldown_s)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dentalpin-nudge")
        self._in_flight = 0
        self._app: Any = None

    def __call__(self, scopes: set[TenantScope]) -> None:
        if self.breaker.open or self._in_flight >= MAX_IN_FLIGHT:
            return
        for scope in scopes:
            self._in_flight += 1
            self._pool.submit(self._send, scope.schema)

    def _send(self, schema: str) -> None:
        try:
            if self.breaker.open:  # opened while this one waited in the pool
                return
            self._producer().send_task(DELIVER_TASK, args=[schema], queue=EVENTS_QUEUE, retry=False)
            self.breaker.succeeded()
        except Exception as exc:
            self.breaker.failed()
            log.warning("event relay nudge failed (%s); the sweep will deliver", exc)
        finally:
            self._in_flight -= 1

    def _producer(self) -> Any:
        if self._app is None:
            from ._celery import make_celery

            self._app = make_celery(
                self.settings, current=False, timeout_s=self.settings.events_nudge_timeout_s
            )
        return self._app

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class InProcessNudge:
    """Delivers in the publishing process, as a background task on its event loop (tests,
    tools, and installations without workers). `drain()` waits for what is under way."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._tasks: set[asyncio.Task[Any]] = set()

    def __call__(self, scopes: set[TenantScope]) -> None:
        from ._relay import deliver

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a commit outside any event loop: leave it to the sweep
            return
        for scope in scopes:
            task = loop.create_task(deliver(self.platform, scope.schema))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("in-process event delivery failed: %s", task.exception())

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def relay_kind(platform: Platform) -> str:
    from ._jobs import executor_kind

    kind = platform.settings.events_relay
    return executor_kind(platform.settings) if kind == "auto" else kind


def make_nudge(platform: Platform) -> CeleryNudge | InProcessNudge | None:
    kind = relay_kind(platform)
    if kind == "celery":
        return CeleryNudge(platform)
    if kind == "inprocess":
        return InProcessNudge(platform)
    return None
