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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from ._db import TenantScope
from ._settings import Settings

if TYPE_CHECKING:
    from ._runtime import Platform

log = logging.getLogger(__name__)
T = TypeVar("T")

DELIVER_TASK = "dentalpin.events.deliver"
SWEEP_TASK = "dentalpin.events.sweep"
EVENTS_QUEUE = "events"
MAX_IN_FLIGHT = 1000
FAILED_DELIVERY = "in-process event delivery failed"


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


def chunked(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pending_key(settings: Settings, schema: str) -> str:
    """The broker-side flag "a relay pass for this tenant is queued"."""
    return f"{settings.celery_key_prefix}dentalpin:relay-queued:{schema}"


class CeleryNudge:
    """Sends `dentalpin.events.deliver([<schema>, ...])` to the `events` queue, off the caller.

    Nudges coalesce twice. While a pass for a tenant is queued and has not started (its
    flag is set in Redis, cleared by the pass as it starts), more commits need no more
    tasks: the queued pass will see their events. And one sender thread takes every
    tenant nudged while it was busy at once: one pipelined flag check, then tasks of up to
    `events_pass_concurrency` tenants each, which a worker process runs side by side. So a
    busy platform costs far fewer tasks than events, and a quiet one still sends at once."""

    def __init__(self, platform: Platform) -> None:
        self.settings = platform.settings
        self.breaker = CircuitBreaker(platform.settings.events_breaker_cooldown_s)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dentalpin-nudge")
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._sending = False
        self._last_send = 0.0
        self._app: Any = None
        self._redis: Any = None

    def __call__(self, scopes: set[TenantScope]) -> None:
        if self.breaker.open:
            return
        with self._lock:
            for scope in scopes:
                if len(self._queued) < MAX_IN_FLIGHT:
                    self._queued.add(scope.schema)
            if self._sending or not self._queued:
                return
            self._sending = True
        self._pool.submit(self._send_queued)

    @property
    def in_flight(self) -> int:
        return len(self._queued)

    def _send_queued(self) -> None:
        """Send what is queued, again and again, until nothing was queued meanwhile. Sends
        follow each other at most every `events_nudge_interval_s`: a quiet clinic's nudge
        leaves at once, a busy platform's nudges wait a moment and share their tasks."""
        interval = self.settings.events_nudge_interval_s
        try:
            while True:
                wait = self._last_send + interval - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                with self._lock:
                    schemas, self._queued = sorted(self._queued), set()
                    if not schemas:
                        self._sending = False
                        return
                self._last_send = time.monotonic()
                self._send(schemas)
        except BaseException:
            with self._lock:
                self._sending = False
            raise

    def _send(self, schemas: list[str]) -> None:
        if self.breaker.open:  # opened while these waited
            return
        try:
            flags = self._client().pipeline(transaction=False)
            expire = int(self.settings.events_lease_s) + 1
            for schema in schemas:
                flags.set(pending_key(self.settings, schema), "1", nx=True, ex=expire)
            # A tenant whose flag was already set has a pass queued.
            fresh = [schema for schema, new in zip(schemas, flags.execute(), strict=True) if new]
            for chunk in chunked(fresh, self.settings.events_pass_concurrency):
                self._producer().send_task(
                    DELIVER_TASK, args=[chunk], queue=EVENTS_QUEUE, retry=False
                )
            self.breaker.succeeded()
        except Exception as exc:
            self.breaker.failed()
            log.warning("event relay nudge failed (%s); the sweep will deliver", exc)

    def _client(self) -> Any:
        if self._redis is None:
            import redis

            timeout = self.settings.events_nudge_timeout_s
            self._redis = redis.Redis.from_url(
                self.settings.redis_url or "redis://127.0.0.1:6379/0",
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
        return self._redis

    def _producer(self) -> Any:
        if self._app is None:
            from ._celery import make_celery

            self._app = make_celery(
                self.settings, current=False, timeout_s=self.settings.events_nudge_timeout_s
            )
        return self._app

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._redis is not None:
            self._redis.close()


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
            log.warning("%s: %s", FAILED_DELIVERY, task.exception())

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
