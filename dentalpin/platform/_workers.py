"""Jobs on Celery workers: the executor that sends them, and each worker process's runtime.

Sending: `CeleryExecutor.submit` puts task `dentalpin.lifecycle.run_job(job_id)` on the
`lifecycle` queue (the tenant id travels in the task headers too); `wait` polls the job
row, which is the truth. Running: every worker process keeps ONE event loop and ONE
`Platform` (engine, registry, caches), created lazily on its first task and never
shared across a fork; its database sessions carry `statement_timeout` and
`idle_in_transaction_session_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ._db import Database
from ._jobs import JobRecord, get_job, load_job_kinds
from ._registry import Registry
from ._runtime import Platform
from ._settings import Settings, get_settings

T = TypeVar("T")
log = logging.getLogger(__name__)

RUN_JOB_TASK = "dentalpin.lifecycle.run_job"
REAP_TASK = "dentalpin.jobs.reap"
LIFECYCLE_QUEUE = "lifecycle"


class CeleryExecutor:
    """Hands jobs to the workers of the `lifecycle` queue; waits by reading the job row."""

    poll_first_s = 0.05
    poll_max_s = 1.0

    async def submit(self, platform: Platform, job: JobRecord) -> None:
        from ._celery import celery_app

        app = celery_app(platform.settings)
        # The tenant travels in the headers too (worker logs, routing); the row stays the truth.
        headers = {"tenant_id": str(job.tenant_id)} if job.tenant_id else {}
        # Blocking socket I/O (bounded by the transport's 2 s timeouts): off the loop.
        await asyncio.to_thread(
            app.send_task,
            RUN_JOB_TASK,
            args=[str(job.id)],
            queue=LIFECYCLE_QUEUE,
            headers=headers,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
        )

    async def wait(self, platform: Platform, job_id: uuid.UUID) -> JobRecord:
        delay = self.poll_first_s
        while True:
            job = await get_job(platform, job_id)
            if job.done:
                return job
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max_s)


def worker_server_settings(settings: Settings) -> dict[str, str]:
    """Session settings of a worker's database connections (asyncpg startup parameters)."""
    return {
        "application_name": "dentalpin-worker",
        "statement_timeout": str(settings.worker_statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(settings.worker_idle_in_transaction_timeout_ms),
        "client_connection_check_interval": str(settings.worker_client_check_ms),
    }


def worker_platform(settings: Settings | None = None) -> Platform:
    settings = settings or get_settings()
    return Platform(
        settings=settings,
        db=Database(
            settings.sqlalchemy_url(), settings, server_settings=worker_server_settings(settings)
        ),
        registry=Registry.discover(),
    )


@dataclass
class _Runtime:
    pid: int
    loop: asyncio.AbstractEventLoop
    platform: Platform


_runtime: _Runtime | None = None


def _current() -> _Runtime:
    global _runtime
    if _runtime is not None and _runtime.pid != os.getpid():
        forget_inherited()
    if _runtime is None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        load_job_kinds()
        _runtime = _Runtime(os.getpid(), loop, worker_platform())
        log.info("worker process %s: event loop and platform ready", os.getpid())
    return _runtime


def run_in_worker(work: Callable[[Platform], Awaitable[T]]) -> T:
    """Run `work(platform)` on this worker process's event loop (created on first use)."""
    runtime = _current()
    return runtime.loop.run_until_complete(work(runtime.platform))


def forget_inherited() -> None:
    """After a fork: drop the parent's runtime without touching its connections.

    The pooled connections' sockets belong to the parent too; closing them here would
    close them under it. `dispose(close=False)` just forgets them, and the child opens
    its own on first use.
    """
    global _runtime
    if _runtime is None:
        return
    _runtime.platform.db.engine.sync_engine.dispose(close=False)
    _runtime = None


def shutdown() -> None:
    """Close this process's platform and loop (worker shutdown)."""
    global _runtime
    runtime, _runtime = _runtime, None
    if runtime is None or runtime.pid != os.getpid():
        return
    try:
        runtime.loop.run_until_complete(runtime.platform.close())
    except Exception:
        log.exception("closing the worker's platform failed")
    finally:
        runtime.loop.close()
