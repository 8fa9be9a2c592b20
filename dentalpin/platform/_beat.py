"""Exactly one beat leads: it holds a PostgreSQL advisory lock for as long as it runs.

Any number of beats may be started (a standby on another machine, a deploy that overlaps
the old one); each waits for the lock before it schedules anything, says which beat holds
it, and takes over within `beat_standby_retry_s` of the leader's end. The lock lives on a
connection of its own. The leader checks that connection every `beat_lock_check_s`; once
it is gone the server has released the lock and another beat may lead already, so the
leader exits at once, with status 75 (EX_TEMPFAIL), for its supervisor to start it again
as a standby. Redis cannot give this guarantee: a lock there outlives a paused leader.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future

import asyncpg

from ._settings import Settings

log = logging.getLogger(__name__)

LOCK_KEYS = (0x44504254, 1)
"""("DPBT", 1), the two-key form: apart from the platform's one-key advisory locks."""
EXIT_LOST = 75

APPLICATION_NAME = "dentalpin-beat"
_HOLDER = f"""
    select coalesce(nullif(a.application_name, ''), 'a session') || ' (backend pid '
           || a.pid || coalesce(', from ' || host(a.client_addr), '') || ', since '
           || to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') || ')'
      from pg_locks l join pg_stat_activity a on a.pid = l.pid
     where l.locktype = 'advisory' and l.granted and l.objsubid = 2
       and l.classid = {LOCK_KEYS[0]} and l.objid = {LOCK_KEYS[1]}
       and l.database = (select oid from pg_database where datname = current_database())
"""
STATUS_SQL = f"""
    select ({_HOLDER}) as leader,
           (select count(*) from pg_stat_activity where datname = current_database()
               and application_name like '{APPLICATION_NAME} %') as connected
"""
"""Who leads (None: no beat runs, nothing schedules the sweep, the reaper or periodic
jobs) and how many beats are connected, leader included (`pipeline_stats`)."""


def _exit_lost() -> None:
    logging.shutdown()  # flush what says why, before the hard exit
    os._exit(EXIT_LOST)


class BeatLeadership:
    """The lock of one beat process, on a thread and event loop of its own (beat itself is
    synchronous). `acquire()` blocks until this process leads, then watches the lock."""

    def __init__(self, settings: Settings, *, on_lost: Callable[[], None] = _exit_lost):
        url = settings.sqlalchemy_url().set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._retry_s = settings.beat_standby_retry_s
        self._check_s = settings.beat_lock_check_s
        self._on_lost = on_lost
        self.name = f"{APPLICATION_NAME} {socket.gethostname()} pid {os.getpid()}"[:63]
        self._conn: asyncpg.Connection | None = None
        self._watcher: Future[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="dentalpin-beat-lock", daemon=True
        )

    def acquire(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._acquire(), self._loop).result()
        self._watcher = asyncio.run_coroutine_threadsafe(self._watch(), self._loop)

    def release(self) -> None:
        """Give the lock up (tests; a stopping process releases it by closing anyway)."""
        if self._watcher is not None:
            self._watcher.cancel()  # before the close, which it would take for a loss
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _acquire(self) -> None:
        said = None
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(
                        self._dsn, timeout=10, server_settings={"application_name": self.name}
                    )
                if await self._conn.fetchval("select pg_try_advisory_lock($1, $2)", *LOCK_KEYS):
                    log.info("beat: leading (%s holds the beat lock)", self.name)
                    return
                holder = await self._conn.fetchval(_HOLDER)
                status = f"another beat leads: {holder or 'a session that just ended'}"
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                await self._close()
                status = f"the database is unreachable ({exc})"
            if status != said:
                log.warning("beat: standing by, %s; trying again every %ss", status, self._retry_s)
                said = status
            await asyncio.sleep(self._retry_s)

    async def _watch(self) -> None:
        assert self._conn is not None
        while True:
            await asyncio.sleep(self._check_s)
            try:
                await asyncio.wait_for(self._conn.fetchval("select 1"), self._check_s)
            except Exception as exc:
                log.critical(
                    "beat: lost the connection that holds the beat lock (%r); stopping, so "
                    "that never two beats lead (restart this one: it will stand by)",
                    exc,
                )
                self._on_lost()
                return

    async def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:  # gone already, or stuck: drop it (nothing holds the lock)
                conn.terminate()


_leadership: list[BeatLeadership] = []


def lead(settings: Settings) -> BeatLeadership:
    """Block until this process is the leading beat; kept for the process's lifetime.
    `dentalpin beat` calls it before Celery's beat opens its schedule file (which standbys
    on a shared data directory must not touch); the `beat_init` signal calls it again for
    a beat started as `celery beat`, and a process that leads already returns at once."""
    if not _leadership:
        leadership = BeatLeadership(settings)
        leadership.acquire()
        _leadership.append(leadership)
    return _leadership[0]
