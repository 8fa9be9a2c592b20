"""Lifecycle jobs: a persistent record per operation, a recorder, and pluggable executors.

The job row is the truth. Its state, progress and log are written through a
connection of their own in autocommit mode, so they are visible while the job's
own transaction runs and survive its rollback. Callers submit through an
`Executor`; the in-process one runs jobs as asyncio tasks, and a Celery executor
can take its place without changing any caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ._errors import Conflict, NotFound, PlatformError
from ._runtime import Platform
from ._tables import job_log, jobs

log = logging.getLogger(__name__)
ACTIVE_STATES = ("queued", "running")
HEARTBEAT_EVERY_S = 10.0


@dataclass(frozen=True)
class JobRecord:
    id: uuid.UUID
    kind: str
    tenant_id: uuid.UUID | None
    params: dict[str, Any]
    state: str
    progress: float
    message: str | None
    error: str | None
    result: dict[str, Any] | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def done(self) -> bool:
        return self.state not in ACTIVE_STATES

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "kind": self.kind,
            "tenant_id": str(self.tenant_id) if self.tenant_id else None,
            "params": self.params,
            "state": self.state,
            "progress": self.progress,
            "message": self.message,
            "error": self.error,
            "result": self.result,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


class JobRecorder:
    """Writes a running job's progress and log, committed at once."""

    def __init__(self, conn: AsyncConnection, job_id: uuid.UUID) -> None:
        self._conn = conn
        self.job_id = job_id
        self._lock = asyncio.Lock()

    async def log(self, message: str, level: str = "info") -> None:
        async with self._lock:
            await self._conn.execute(
                insert(job_log).values(job_id=self.job_id, level=level, message=message)
            )
            await self._conn.execute(
                update(jobs).where(jobs.c.id == self.job_id).values(heartbeat_at=text("now()"))
            )
        log.info("job %s: %s", self.job_id, message)

    async def progress(self, fraction: float, message: str | None = None) -> None:
        values: dict[str, Any] = {
            "progress": max(0.0, min(1.0, fraction)),
            "heartbeat_at": text("now()"),
        }
        if message is not None:
            values["message"] = message
        async with self._lock:
            await self._conn.execute(update(jobs).where(jobs.c.id == self.job_id).values(**values))

    async def heartbeat(self) -> None:
        async with self._lock:
            await self._conn.execute(
                update(jobs).where(jobs.c.id == self.job_id).values(heartbeat_at=text("now()"))
            )


JobHandler = Callable[[Platform, JobRecord, JobRecorder], Awaitable[dict[str, Any] | None]]
_handlers: dict[str, JobHandler] = {}


def job_kind(kind: str) -> Callable[[JobHandler], JobHandler]:
    """Register the handler of a job kind (`lifecycle.install`...)."""

    def register(handler: JobHandler) -> JobHandler:
        _handlers[kind] = handler
        return handler

    return register


class Executor(Protocol):
    async def submit(self, platform: Platform, job: JobRecord) -> None: ...

    async def wait(self, platform: Platform, job_id: uuid.UUID) -> JobRecord: ...


class InProcessExecutor:
    """Runs jobs as tasks of the current event loop (CLI, tests, single-process dev)."""

    def __init__(self) -> None:
        self._tasks: dict[uuid.UUID, asyncio.Task[JobRecord]] = {}

    async def submit(self, platform: Platform, job: JobRecord) -> None:
        self._tasks[job.id] = asyncio.create_task(run_job(platform, job.id))

    async def wait(self, platform: Platform, job_id: uuid.UUID) -> JobRecord:
        task = self._tasks.pop(job_id, None)
        if task is not None:
            return await task
        return await get_job(platform, job_id)


def _record(row: Any) -> JobRecord:
    return JobRecord(
        id=row.id,
        kind=row.kind,
        tenant_id=row.tenant_id,
        params=row.params,
        state=row.state,
        progress=row.progress,
        message=row.message,
        error=row.error,
        result=row.result,
        attempts=row.attempts,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


async def enqueue(
    platform: Platform, kind: str, tenant_id: uuid.UUID | None, params: dict[str, Any]
) -> JobRecord:
    """Create a queued job; refused while the tenant has another active lifecycle job."""
    if kind not in _handlers:
        raise PlatformError(f"unknown job kind '{kind}'")
    job_id = uuid.uuid4()
    async with platform.db.autocommit() as conn:
        if tenant_id is not None:
            await _fail_abandoned(conn, tenant_id, platform.settings.job_heartbeat_stale_s)
        try:
            row = (
                await conn.execute(
                    insert(jobs)
                    .values(
                        id=job_id, kind=kind, tenant_id=tenant_id, params=params, state="queued"
                    )
                    .returning(*jobs.c)
                )
            ).one()
        except IntegrityError:
            active = (
                await conn.execute(
                    select(jobs.c.id, jobs.c.kind, jobs.c.state).where(
                        jobs.c.tenant_id == tenant_id, jobs.c.state.in_(ACTIVE_STATES)
                    )
                )
            ).first()
            what = f"job {active.id} ({active.kind}, {active.state})" if active else "another job"
            raise Conflict(
                f"this tenant already has a lifecycle operation in progress: {what}. "
                f"Wait for it (`dentalpin jobs show {active.id if active else ''}`) and retry."
            ) from None
    return _record(row)


async def _fail_abandoned(conn: AsyncConnection, tenant_id: uuid.UUID, stale_s: float) -> None:
    """A running job whose heartbeat stopped lost its process; free the tenant."""
    await conn.execute(
        update(jobs)
        .where(
            jobs.c.tenant_id == tenant_id,
            jobs.c.state == "running",
            jobs.c.heartbeat_at < text(f"now() - interval '{float(stale_s)} seconds'"),
        )
        .values(
            state="failed",
            error="the process running this job stopped (no heartbeat)",
            finished_at=text("now()"),
        )
    )


async def submit(
    platform: Platform, kind: str, tenant_id: uuid.UUID | None, params: dict[str, Any]
) -> JobRecord:
    job = await enqueue(platform, kind, tenant_id, params)
    await executor_of(platform).submit(platform, job)
    return job


def executor_of(platform: Platform) -> Executor:
    executor = platform.state.get("executor")
    if executor is None:
        executor = platform.state["executor"] = InProcessExecutor()
    return executor


async def get_job(platform: Platform, job_id: uuid.UUID) -> JobRecord:
    async with platform.db.autocommit() as conn:
        row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
    if row is None:
        raise NotFound(f"no job with id {job_id}")
    return _record(row)


async def list_jobs(
    platform: Platform, tenant_id: uuid.UUID | None = None, limit: int = 50
) -> list[JobRecord]:
    query = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(jobs.c.tenant_id == tenant_id)
    async with platform.db.autocommit() as conn:
        return [_record(row) for row in await conn.execute(query)]


async def job_log_lines(platform: Platform, job_id: uuid.UUID) -> list[dict[str, Any]]:
    async with platform.db.autocommit() as conn:
        rows = await conn.execute(
            select(job_log.c.at, job_log.c.level, job_log.c.message)
            .where(job_log.c.job_id == job_id)
            .order_by(job_log.c.id)
        )
        return [{"at": r.at.isoformat(), "level": r.level, "message": r.message} for r in rows]


async def run_job(platform: Platform, job_id: uuid.UUID) -> JobRecord:
    """Run one queued job to its end, recording everything through an autocommit connection."""
    async with platform.db.autocommit() as conn:
        claimed = (
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == "queued")
                .values(
                    state="running",
                    started_at=text("now()"),
                    heartbeat_at=text("now()"),
                    attempts=jobs.c.attempts + 1,
                    worker=f"{socket.gethostname()}:{os.getpid()}",
                )
                .returning(*jobs.c)
            )
        ).first()
        if claimed is None:
            return await get_job(platform, job_id)
        job = _record(claimed)
        recorder = JobRecorder(conn, job_id)
        async with _heartbeat(recorder):
            try:
                result = await _handlers[job.kind](platform, job, recorder)
            except Exception as exc:
                await _finish(conn, job_id, "failed", error=_describe(exc))
                await recorder.log(_describe(exc), level="error")
                if not isinstance(exc, PlatformError):
                    log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
            else:
                await _finish(conn, job_id, "succeeded", result=result or {})
    return await get_job(platform, job_id)


def _describe(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, PlatformError) else f"{type(exc).__name__}: {exc}"


async def _finish(
    conn: AsyncConnection,
    job_id: uuid.UUID,
    state: str,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    values: dict[str, Any] = {"state": state, "finished_at": text("now()"), "error": error}
    if state == "succeeded":
        values["progress"] = 1.0
        values["result"] = result
    await conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))


@contextlib.asynccontextmanager
async def _heartbeat(recorder: JobRecorder) -> AsyncIterator[None]:
    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_S)
            await recorder.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
