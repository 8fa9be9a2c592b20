"""The Celery application: Redis broker, the three queues, one event loop per worker process.

- `lifecycle`: `dentalpin.lifecycle.run_job(job_id)` claims and runs a job (`_jobs.run_job`).
  The job row, not the broker, is the truth: a redelivered or duplicated task finds the
  job taken or done and does nothing.
- `periodic`: beat's schedule, among it the job reaper (`dentalpin.jobs.reap`).
- `events`: the default queue, for the events pipeline.

Tasks are acknowledged late and workers prefetch one message at a time. Each worker
process builds its event loop and platform lazily (`_workers`), after the fork.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

from . import _workers
from ._jobs import reap_jobs, run_job
from ._nudge import DELIVER_TASK, EVENTS_QUEUE, SWEEP_TASK, pending_key
from ._periodic import run_chunk, tick
from ._relay import deliver, sweep
from ._settings import Settings, get_settings
from ._workers import LIFECYCLE_QUEUE, REAP_TASK, RUN_JOB_TASK

log = logging.getLogger(__name__)
QUEUES = ("events", "lifecycle", "periodic")
HEARTBEAT_TASK = "dentalpin.platform.heartbeat"
TICK_TASK = "dentalpin.periodic.tick"
RUN_PERIODIC_TASK = "dentalpin.periodic.run"


def make_celery(
    settings: Settings | None = None, *, current: bool = True, timeout_s: float = 2.0
) -> Celery:
    settings = settings or get_settings()
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    transport: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if settings.celery_key_prefix:
        transport["global_keyprefix"] = settings.celery_key_prefix
    app = Celery("dentalpin", broker=broker, backend=None, set_as_current=current)
    app.conf.update(
        # Queues are declared on first use (task_create_missing_queues); workers pick with -Q.
        task_default_queue="events",
        task_routes={
            RUN_JOB_TASK: {"queue": LIFECYCLE_QUEUE},
            REAP_TASK: {"queue": "periodic"},
            HEARTBEAT_TASK: {"queue": "periodic"},
            DELIVER_TASK: {"queue": EVENTS_QUEUE},
            SWEEP_TASK: {"queue": "periodic"},
            TICK_TASK: {"queue": "periodic"},
            RUN_PERIODIC_TASK: {"queue": "periodic"},
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        # A broker outage of any length: keep reconnecting (the default gives up after 100).
        broker_connection_max_retries=None,
        broker_transport_options=transport,
        beat_schedule={
            "platform-heartbeat": {
                "task": HEARTBEAT_TASK,
                "schedule": 60.0,
                "options": {"queue": "periodic"},
            },
            "jobs-reaper": {
                "task": REAP_TASK,
                "schedule": settings.job_reap_every_s,
                # A backlog of reaps (workers were down) runs once, not once per tick.
                "options": {"queue": "periodic", "expires": settings.job_reap_every_s},
            },
            "periodic-tick": {
                "task": TICK_TASK,
                "schedule": settings.periodic_tick_s,
                "options": {"queue": "periodic", "expires": settings.periodic_tick_s},
            },
            "events-sweep": {
                "task": SWEEP_TASK,
                "schedule": settings.events_sweep_every_s,
                "options": {"queue": "periodic", "expires": settings.events_sweep_every_s},
            },
        },
        timezone="UTC",
    )

    clients: list[redis.Redis] = []

    def flags() -> redis.Redis:
        """This process's Redis client for the nudges' coalescing flags (made after fork)."""
        if not clients:
            clients.append(
                redis.Redis.from_url(
                    broker, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
                )
            )
        return clients[0]

    @app.task(name=HEARTBEAT_TASK)  # type: ignore[untyped-decorator]
    def heartbeat() -> dict[str, Any]:
        """Proves the beat -> broker -> worker path works; shows up in worker logs."""
        return {"ok": True}

    @app.task(name=RUN_JOB_TASK, bind=True)  # type: ignore[untyped-decorator]
    def run_lifecycle_job(task: Any, job_id: str) -> str:
        """Claim and run one job; a job that is not queued any more is left alone."""
        tenant = getattr(task.request, "tenant_id", None)
        job = _workers.run_in_worker(lambda platform: run_job(platform, uuid.UUID(job_id)))
        return f"job {job.id} (tenant {tenant}): {job.state}"

    @app.task(name=REAP_TASK)  # type: ignore[untyped-decorator]
    def reap() -> dict[str, Any]:
        """Re-queue jobs whose worker died, fail those out of attempts, re-send lost ones."""
        report = _workers.run_in_worker(
            lambda platform: reap_jobs(platform, _workers.CeleryExecutor())
        )
        return report.as_dict()

    @app.task(name=DELIVER_TASK)  # type: ignore[untyped-decorator]
    def deliver_events(tenant: str) -> dict[str, Any]:
        """One relay pass over one tenant (its schema name or id); another if work is left."""
        key: uuid.UUID | str = tenant if tenant.startswith("t_") else uuid.UUID(tenant)
        if isinstance(key, str):
            # From here on, commits must nudge again: this pass may already be past them.
            try:
                flags().delete(pending_key(settings, key))
            except Exception as exc:  # the flag expires by itself; the pass runs anyway
                log.warning("could not clear the relay flag of %s: %s", key, exc)
        report = _workers.run_in_worker(lambda platform: deliver(platform, key))
        if report.more:
            app.send_task(DELIVER_TASK, args=[tenant], queue=EVENTS_QUEUE)
        return report.as_dict()

    @app.task(name=SWEEP_TASK)  # type: ignore[untyped-decorator]
    def sweep_events() -> int:
        """A relay pass for every tenant whose pending work is due (the nudge was lost,
        a retry's backoff ran out, or a lease expired)."""

        def send(tenant_id: uuid.UUID) -> None:
            app.send_task(DELIVER_TASK, args=[str(tenant_id)], queue=EVENTS_QUEUE)

        return len(_workers.run_in_worker(lambda platform: sweep(platform, send)))

    @app.task(name=TICK_TASK)  # type: ignore[untyped-decorator]
    def periodic_tick() -> int:
        """Claim the due periodic jobs and send their tenants, chunked, with jitter."""
        chunks = _workers.run_in_worker(tick)
        for chunk in chunks:
            app.send_task(
                RUN_PERIODIC_TASK, args=chunk.as_args(), queue="periodic", countdown=chunk.delay_s
            )
        return len(chunks)

    @app.task(name=RUN_PERIODIC_TASK)  # type: ignore[untyped-decorator]
    def run_periodic(module: str, job: str, tenant_ids: list[str], due_at: str) -> dict[str, Any]:
        """One periodic job over one chunk of tenants."""
        report = _workers.run_in_worker(
            lambda platform: run_chunk(platform, module, job, tenant_ids, due_at)
        )
        return report.as_dict()

    return app


_senders: dict[tuple[str | None, str], Celery] = {}


def celery_app(settings: Settings) -> Celery:
    """The app to send with for these settings: the process's own `app` when the broker and
    key prefix are the same, else one built (once) for them (tests, tools)."""
    key = (settings.redis_url, settings.celery_key_prefix)
    if key == (app_settings.redis_url, app_settings.celery_key_prefix):
        return app
    if key not in _senders:
        _senders[key] = make_celery(settings, current=False)
    return _senders[key]


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _after_fork(**_: Any) -> None:
    _workers.forget_inherited()


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _process_shutdown(**_: Any) -> None:
    _workers.shutdown()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _worker_shutdown(**_: Any) -> None:
    _workers.shutdown()  # the solo pool runs tasks in the main process


class _QuietHousekeeping(logging.Filter):
    """Drops the INFO lines of the every-few-seconds housekeeping tasks (the sweep, the
    periodic tick, the heartbeat): "received", "succeeded", "Sending due task". Their
    warnings and errors still show."""

    NAMES = (SWEEP_TASK, TICK_TASK, HEARTBEAT_TASK, "events-sweep", "periodic-tick")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        return not any(name in message for name in self.NAMES)


for _logger in ("celery.app.trace", "celery.worker.strategy", "celery.beat"):
    logging.getLogger(_logger).addFilter(_QuietHousekeeping())

app_settings = get_settings()
app = make_celery(app_settings)
