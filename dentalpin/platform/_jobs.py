"""Lifecycle jobs: a persistent record per operation, a recorder, executors and a reaper.

The job row is the truth. Its state, progress and log are written through a
connection of their own in autocommit mode, so they are visible while the job's
own transaction runs and survive its rollback. Callers submit through an
`Executor`: the in-process one runs jobs as asyncio tasks of the caller, the Celery
one (`_workers.CeleryExecutor`) sends the job id to the `lifecycle` queue. Whoever
runs a job claims it with a conditional UPDATE, so a job runs at most once at a time
however often its task is delivered; the reaper re-queues a job whose worker stopped
sending heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata as importlib_metadata
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Executable, func, insert, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError, IntegrityError, PendingRollbackError
from sqlalchemy.ext.asyncio import AsyncConnection

from ._db import Database
from ._errors import Conflict, NotFound, PlatformError, Unavailable
from ._runtime import Platform
from ._settings import Settings
from ._tables import job_log, jobs

log = logging.getLogger(__name__)
ACTIVE_STATES = ("queued", "running")
JOB_KINDS_GROUP = "dentalpin.jobs"
"""Entry-point group naming the modules that register job kinds (imported on demand)."""
FILES_WRITTEN = "files_written"
"""Key of a running job's `result` listing the files it wrote before its commit."""


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
    worker: str | None = None
    heartbeat_at: datetime | None = None

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
            "worker": self.worker,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


class JobRecorder:
    """Writes one attempt of a running job: progress, log, heartbeat, files, outcome.

    Everything goes through an autocommit connection of its own, reopened once if the
    database dropped it. Row updates only apply while this attempt still owns the job
    (`state = 'running'` and the attempt number it claimed): once the reaper has given
    the job to another attempt, a late writer changes nothing.
    """

    def __init__(self, db: Database, job_id: uuid.UUID, attempt: int) -> None:
        self._db = db
        self.job_id = job_id
        self.attempt = attempt
        self.lost = False
        """Set when a heartbeat found the job no longer ours (reaped and re-queued)."""
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()

    def _ours(self) -> ColumnElement[bool]:
        return (
            (jobs.c.id == self.job_id)
            & (jobs.c.state == "running")
            & (jobs.c.attempts == self.attempt)
        )

    async def _execute(self, statement: Executable) -> CursorResult[Any]:
        async with self._lock:
            for last in (False, True):
                try:
                    if self._conn is None:
                        self._conn = await self._db.engine.connect()
                        await self._conn.execution_options(isolation_level="AUTOCOMMIT")
                    return await self._conn.execute(statement)
                except (DBAPIError, PendingRollbackError) as exc:
                    # PendingRollbackError: an earlier statement found the connection dead and
                    # invalidated it; it must be replaced just the same.
                    lost = isinstance(exc, PendingRollbackError) or exc.connection_invalidated
                    if last or not lost:
                        raise
                    log.warning("job %s: database connection lost; reconnecting", self.job_id)
                    await self._drop()
        raise AssertionError("unreachable")

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def log(self, message: str, level: str = "info") -> None:
        await self._execute(
            insert(job_log).values(job_id=self.job_id, level=level, message=message)
        )
        await self._execute(update(jobs).where(self._ours()).values(heartbeat_at=text("now()")))
        log.info("job %s: %s", self.job_id, message)

    async def progress(self, fraction: float, message: str | None = None) -> None:
        values: dict[str, Any] = {
            "progress": max(0.0, min(1.0, fraction)),
            "heartbeat_at": text("now()"),
        }
        if message is not None:
            values["message"] = message
        await self._execute(update(jobs).where(self._ours()).values(**values))

    async def heartbeat(self) -> bool:
        """Prove this attempt is alive; False when the job is no longer ours."""
        done = await self._execute(
            update(jobs).where(self._ours()).values(heartbeat_at=text("now()"))
        )
        return done.rowcount == 1

    async def wrote_file(self, path: str) -> None:
        """Record, before writing it, a file this attempt is about to create: if the attempt
        dies before its commit, whoever next holds the tenant deletes it."""
        await self._execute(
            text(
                "update platform.jobs set result = jsonb_set(coalesce(result, '{}'::jsonb), "
                f"'{{{FILES_WRITTEN}}}', coalesce(result -> '{FILES_WRITTEN}', '[]'::jsonb) "
                "|| jsonb_build_array(cast(:path as text))) "
                "where id = :id and state = 'running' and attempts = :attempt"
            ).bindparams(path=path, id=self.job_id, attempt=self.attempt)
        )

    async def finish(
        self, state: str, *, error: str | None = None, result: dict[str, Any] | None = None
    ) -> bool:
        values: dict[str, Any] = {
            "state": state,
            "finished_at": text("now()"),
            "error": error,
            "result": result,
        }
        if state == "succeeded":
            values["progress"] = 1.0
        done = await self._execute(update(jobs).where(self._ours()).values(**values))
        return done.rowcount == 1


JobHandler = Callable[[Platform, JobRecord, JobRecorder], Awaitable[dict[str, Any] | None]]
_handlers: dict[str, JobHandler] = {}
_current: contextvars.ContextVar[JobRecorder | None] = contextvars.ContextVar(
    "dentalpin_job", default=None
)


def job_kind(kind: str) -> Callable[[JobHandler], JobHandler]:
    """Register the handler of a job kind (`lifecycle.install`...)."""

    def register(handler: JobHandler) -> JobHandler:
        _handlers[kind] = handler
        return handler

    return register


def load_job_kinds() -> None:
    """Import the modules that register job kinds (entry points `dentalpin.jobs`).

    The core knows no job kind itself; the tenants layer registers the lifecycle ones.
    A worker process imports them through this, without the core importing `tenants`.
    """
    for entry in importlib_metadata.entry_points(group=JOB_KINDS_GROUP):
        try:
            entry.load()
        except Exception:
            log.exception("could not load job kinds from %s", entry.value)


def _handler(kind: str) -> JobHandler | None:
    if kind not in _handlers:
        load_job_kinds()
    return _handlers.get(kind)


async def note_written_file(path: str) -> None:
    """Tell the job running in this context (if any) that a file is about to be written."""
    recorder = _current.get()
    if recorder is not None:
        await recorder.wrote_file(path)


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
        worker=row.worker,
        heartbeat_at=row.heartbeat_at,
    )


async def enqueue(
    platform: Platform, kind: str, tenant_id: uuid.UUID | None, params: dict[str, Any]
) -> JobRecord:
    """Create a queued job; refused while the tenant has another active lifecycle job."""
    if _handler(kind) is None:
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
                        id=job_id,
                        kind=kind,
                        tenant_id=tenant_id,
                        params=params,
                        state="queued",
                        heartbeat_at=text("now()"),
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
    platform: Platform,
    kind: str,
    tenant_id: uuid.UUID | None,
    params: dict[str, Any],
    executor: Executor | None = None,
) -> JobRecord:
    """Record a queued job and hand it to the executor (the platform's, by default).

    If the executor cannot take it (the broker is down), the job is marked failed at once
    (nothing ran) and `Unavailable` is raised, rather than leaving it queued for nobody.
    """
    job = await enqueue(platform, kind, tenant_id, params)
    try:
        await (executor or executor_of(platform)).submit(platform, job)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        await withdraw_queued(
            platform, job.id, f"could not hand the job to the workers ({reason}); nothing ran"
        )
        raise Unavailable(
            f"could not hand job {job.id} to the workers: {reason}. Check that Redis "
            "(REDIS_URL) is reachable, or run jobs in-process (DENTALPIN_JOB_EXECUTOR=inprocess)"
        ) from exc
    return job


async def withdraw_queued(platform: Platform, job_id: uuid.UUID, error: str) -> bool:
    """Fail a job that is still queued (nobody claimed it); False when it was taken first."""
    async with platform.db.autocommit() as conn:
        done = await conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.state == "queued")
            .values(state="failed", finished_at=text("now()"), error=error)
        )
    return done.rowcount == 1


def executor_kind(settings: Settings) -> str:
    """`celery` or `inprocess`, from DENTALPIN_JOB_EXECUTOR (`auto` decides here)."""
    if settings.job_executor != "auto":
        return settings.job_executor
    return "celery" if settings.redis_url and settings.environment != "test" else "inprocess"


def executor_of(platform: Platform) -> Executor:
    """The platform's executor, chosen once from its settings (see `executor_kind`)."""
    executor: Executor | None = platform.state.get("executor")
    if executor is None:
        if executor_kind(platform.settings) == "celery":
            from ._workers import CeleryExecutor

            executor = CeleryExecutor()
        else:
            executor = InProcessExecutor()
        platform.state["executor"] = executor
    return executor


async def get_job(platform: Platform, job_id: uuid.UUID) -> JobRecord:
    async with platform.db.autocommit() as conn:
        row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
    if row is None:
        raise NotFound(f"no job with id {job_id}")
    return _record(row)


async def list_jobs(
    platform: Platform,
    tenant_id: uuid.UUID | None = None,
    limit: int = 50,
    among: Iterable[uuid.UUID] | None = None,
) -> list[JobRecord]:
    """Newest first: every job, a tenant's, or (`among`) only those of these tenants."""
    query = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(jobs.c.tenant_id == tenant_id)
    if among is not None:
        query = query.where(jobs.c.tenant_id.in_(sorted(set(among))))
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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def run_job(platform: Platform, job_id: uuid.UUID) -> JobRecord:
    """Claim a queued job and run it to its end; a job that is not queued is left alone.

    The claim is one conditional UPDATE (`state = 'queued'` → `running`, attempts + 1), so
    of two deliveries of the same job only one runs it; the other returns its record.
    """
    async with platform.db.autocommit() as conn:
        claimed = (
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == "queued")
                .values(
                    state="running",
                    started_at=text("now()"),
                    heartbeat_at=text("now()"),
                    finished_at=None,
                    error=None,
                    attempts=jobs.c.attempts + 1,
                    worker=worker_name(),
                )
                .returning(*jobs.c)
            )
        ).first()
    if claimed is None:
        log.info("job %s is not queued (already taken or done); nothing to run", job_id)
        return await get_job(platform, job_id)
    job = _record(claimed)
    recorder = JobRecorder(platform.db, job_id, job.attempts)
    token = _current.set(recorder)
    try:
        await _run_claimed(platform, job, recorder)
    finally:
        _current.reset(token)
        await recorder.close()
    return await get_job(platform, job_id)


async def _run_claimed(platform: Platform, job: JobRecord, recorder: JobRecorder) -> None:
    if job.attempts > 1:
        await recorder.log(f"attempt {job.attempts} on {worker_name()}")
    handler = _handler(job.kind)
    try:
        async with _heartbeat(recorder, platform.settings.job_heartbeat_every_s):
            if handler is None:
                raise PlatformError(f"unknown job kind '{job.kind}' (no handler in this process)")
            result = await handler(platform, job, recorder)
    except asyncio.CancelledError:
        if not recorder.lost:
            raise
        # Our heartbeat found the job re-queued (we were taken for dead): the operation
        # was cancelled before its commit, and the job belongs to its next attempt now.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        await recorder.log(
            f"attempt {job.attempts} stopped: the job was given to another attempt", "warning"
        )
    except Exception as exc:
        await recorder.finish("failed", error=_describe(exc))
        await recorder.log(_describe(exc), level="error")
        if not isinstance(exc, PlatformError):
            log.error("job %s crashed:\n%s", job.id, traceback.format_exc())
    else:
        if not await recorder.finish("succeeded", result=result or {}):
            log.warning("job %s finished after it was taken from this attempt", job.id)


def _describe(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, PlatformError) else f"{type(exc).__name__}: {exc}"


@contextlib.asynccontextmanager
async def _heartbeat(recorder: JobRecorder, every_s: float) -> AsyncIterator[None]:
    owner = asyncio.current_task()

    async def beat() -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                ours = await recorder.heartbeat()
            except Exception:
                log.exception("job %s: heartbeat failed", recorder.job_id)
                continue
            if not ours and owner is not None:
                recorder.lost = True
                owner.cancel()
                return

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# The reaper ---------------------------------------------------------------------------


@dataclass
class ReapReport:
    requeued: list[JobRecord] = field(default_factory=list)
    """Running jobs whose worker stopped, queued again for another attempt."""
    failed: list[JobRecord] = field(default_factory=list)
    """Running jobs whose worker stopped on their last allowed attempt."""
    resent: list[JobRecord] = field(default_factory=list)
    """Queued jobs nobody claimed for DENTALPIN_JOB_RESEND_AFTER_S, sent again."""
    unsent: dict[str, str] = field(default_factory=dict)
    """Jobs the executor could not take (broker down): job id -> error; the next run retries."""

    @property
    def submitted(self) -> list[JobRecord]:
        return [*self.requeued, *self.resent]

    def as_dict(self) -> dict[str, Any]:
        return {
            "requeued": [str(j.id) for j in self.requeued],
            "failed": [str(j.id) for j in self.failed],
            "resent": [str(j.id) for j in self.resent],
            "unsent": self.unsent,
        }


_DEAD = """
    with dead as (
        select id, worker, heartbeat_at as last_beat from platform.jobs
         where state = 'running'
           and heartbeat_at < now() - make_interval(secs => :stale)
           and (attempts < :max_attempts) = :retry
         for update skip locked
    )
    update platform.jobs j set {assignments}
      from dead where j.id = dead.id
    returning j.*, dead.worker as dead_worker, dead.last_beat
"""


async def reap_jobs(platform: Platform, executor: Executor | None = None) -> ReapReport:
    """Recover jobs from dead workers, judged by the job rows alone.

    - `running` with a heartbeat older than DENTALPIN_JOB_HEARTBEAT_STALE_S: its worker
      died (a lifecycle operation is one transaction, so it was rolled back). Queued again
      and re-sent while it has attempts left (DENTALPIN_JOB_MAX_ATTEMPTS), else failed.
    - `queued` and not (re)sent for DENTALPIN_JOB_RESEND_AFTER_S: its message was lost
      (broker restarted without persistence...): sent again. A duplicate is harmless, the
      claim lets one delivery run it.

    Each change is a conditional UPDATE, so concurrent reapers never act twice on a job.
    """
    settings = platform.settings
    report = ReapReport()
    params = {
        "stale": float(settings.job_heartbeat_stale_s),
        "max_attempts": settings.job_max_attempts,
    }
    async with platform.db.autocommit() as conn:
        rows = await conn.execute(
            text(_DEAD.format(assignments="state = 'queued', heartbeat_at = now()")),
            {**params, "retry": True},
        )
        for row in rows.all():
            job = _record(row)
            report.requeued.append(job)
            await _log(
                conn,
                job.id,
                f"attempt {job.attempts} on {row.dead_worker} stopped (last heartbeat "
                f"{_at(row.last_beat)}); re-queued for attempt {job.attempts + 1} of "
                f"{settings.job_max_attempts}",
                "warning",
            )
        error = (
            f"gave up after {settings.job_max_attempts} attempt(s): the worker running each one "
            f"stopped without finishing (no heartbeat for {settings.job_heartbeat_stale_s:g}s). "
            "A lifecycle operation is one transaction, so each attempt was rolled back and "
            "nothing changed; see the workers' logs (killed? out of memory? a hook hanging?) "
            "and submit the operation again"
        )
        rows = await conn.execute(
            text(_DEAD.format(assignments="state = 'failed', finished_at = now(), error = :error")),
            {**params, "retry": False, "error": error},
        )
        for row in rows.all():
            job = _record(row)
            report.failed.append(job)
            await _log(
                conn,
                job.id,
                f"attempt {job.attempts} on {row.dead_worker} stopped (last heartbeat "
                f"{_at(row.last_beat)}); no attempts left",
                "error",
            )
        rows = await conn.execute(
            update(jobs)
            .where(
                jobs.c.state == "queued",
                func.coalesce(jobs.c.heartbeat_at, jobs.c.created_at)
                < text("now() - make_interval(secs => :resend)"),
            )
            .values(heartbeat_at=text("now()"))
            .returning(*jobs.c),
            {"resend": float(settings.job_resend_after_s)},
        )
        report.resent = [_record(row) for row in rows]
        for job in report.resent:
            await _log(conn, job.id, "still queued: sent to the workers again", "warning")
    executor = executor or executor_of(platform)
    for job in report.submitted:
        try:
            await executor.submit(platform, job)
        except Exception as exc:
            report.unsent[str(job.id)] = f"{type(exc).__name__}: {exc}"
            log.warning("reaper could not re-send job %s: %s", job.id, exc)
    if report.requeued or report.failed or report.resent:
        log.warning(
            "reaper: %d re-queued, %d failed, %d re-sent",
            len(report.requeued),
            len(report.failed),
            len(report.resent),
        )
    return report


def _at(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "never"


async def _log(conn: AsyncConnection, job_id: uuid.UUID, message: str, level: str) -> None:
    await conn.execute(insert(job_log).values(job_id=job_id, level=level, message=message))


# Files written by attempts that never committed -----------------------------------------


async def files_written_by_jobs(
    platform: Platform, tenant_id: uuid.UUID
) -> dict[uuid.UUID, list[str]]:
    """Files that jobs of a tenant recorded before writing them (`wrote_file`) and that no
    later step cleared. Only meaningful to a caller holding the tenant's lifecycle lock:
    then no attempt that wrote one of them can still commit."""
    async with platform.db.autocommit() as conn:
        rows = await conn.execute(
            select(jobs.c.id, jobs.c.result[FILES_WRITTEN].label("files")).where(
                jobs.c.tenant_id == tenant_id, jobs.c.result.has_key(FILES_WRITTEN)
            )
        )
        return {row.id: [str(p) for p in row.files or []] for row in rows}


async def forget_written_files(platform: Platform, job_ids: list[uuid.UUID]) -> None:
    if not job_ids:
        return
    async with platform.db.autocommit() as conn:
        await conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(job_ids))
            .values(result=func.nullif(jobs.c.result.op("-")(FILES_WRITTEN), text("'{}'::jsonb")))
        )
