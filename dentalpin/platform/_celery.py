"""The Celery application: Redis broker, the three queues, one event loop per worker process.

- `lifecycle`: `dentalpin.lifecycle.run_job(job_id)` claims and runs a job (`_jobs.run_job`).
  The job row, not the broker, is the truth: a redelivered or duplicated task finds the
  job taken or done and does nothing.
- `periodic`: beat's schedule, among it the job reaper (`dentalpin.jobs.reap`) and the
  mail queue's retries (`dentalpin.mail.retry`) and the custom domains' re-checks.
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
from celery.signals import (
    beat_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from . import _beat, _workers
from ._domains import recheck_domains
from ._jobs import reap_jobs, run_job
from ._mail_queue import retry_due
from ._nudge import DELIVER_TASK, EVENTS_QUEUE, SWEEP_TASK, chunked, pending_key
from ._periodic import run_chunk, tick
from ._relay import DeliveryReport, deliver_many, prune, sweep
from ._settings import Settings, get_settings
from ._workers import LIFECYCLE_QUEUE, REAP_TASK, RUN_JOB_TASK

log = logging.getLogger(__name__)
QUEUES = ("events", "lifecycle", "periodic")
HEARTBEAT_TASK = "dentalpin.platform.heartbeat"
TICK_TASK = "dentalpin.periodic.tick"
PRUNE_TASK = "dentalpin.events.prune"
MAIL_RETRY_TASK = "dentalpin.mail.retry"
DOMAINS_RECHECK_TASK = "dentalpin.domains.recheck"
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
            PRUNE_TASK: {"queue": "periodic"},
            MAIL_RETRY_TASK: {"queue": "periodic"},
            DOMAINS_RECHECK_TASK: {"queue": "periodic"},
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
            "events-prune": {
                "task": PRUNE_TASK,
                "schedule": settings.events_prune_every_s,
                "options": {"queue": "periodic", "expires": settings.events_prune_every_s},
            },
            "mail-retry": {
                "task": MAIL_RETRY_TASK,
                "schedule": settings.mail_retry_every_s,
                "options": {"queue": "periodic", "expires": settings.mail_retry_every_s},
            },
            "domains-recheck": {
                "task": DOMAINS_RECHECK_TASK,
                # Hourly passes take the names due (each every domain_recheck_every_s).
                "schedule": min(3600.0, settings.domain_recheck_every_s),
                "options": {"queue": "periodic", "expires": 3600.0},
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

    def send_passes(tenants: list[str]) -> None:
        """Relay tasks for `tenants`, a few per task (see `CeleryNudge`)."""
        for chunk in chunked(tenants, settings.events_pass_concurrency):
            app.send_task(DELIVER_TASK, args=[chunk], queue=EVENTS_QUEUE)

    @app.task(name=DELIVER_TASK)  # type: ignore[untyped-decorator]
    def deliver_events(tenants: str | list[str]) -> dict[str, Any]:
        """Relay passes over the tenants the task names (schema names or ids; one name is
        the message an earlier release sent), side by side; another task for those with
        work left."""
        names = [tenants] if isinstance(tenants, str) else list(tenants)
        keys = [_tenant_key(name) for name in names]
        schemas = [key for key in keys if isinstance(key, str)]
        if schemas:
            # From here on, commits must nudge again: these passes may already be past them.
            try:
                flags().delete(*(pending_key(settings, schema) for schema in schemas))
            except Exception as exc:  # the flags expire by themselves; the passes run anyway
                log.warning("could not clear the relay flags of %s: %s", schemas, exc)
        results = _workers.run_in_worker(lambda platform: deliver_many(platform, keys))
        send_passes([n for n, r in zip(names, results, strict=True) if _more(r)])
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]  # logged with the task; the leases bring the work back
        totals: dict[str, Any] = {}
        for report in results:
            if isinstance(report, DeliveryReport):
                for name, value in report.as_dict().items():
                    totals[name] = totals.get(name, 0) + value
        return totals

    @app.task(name=SWEEP_TASK)  # type: ignore[untyped-decorator]
    def sweep_events() -> int:
        """Relay passes for every tenant whose pending work is due (the nudge was lost,
        a retry's backoff ran out, or a lease expired), a few tenants per task."""
        due: list[str] = []
        _workers.run_in_worker(lambda platform: sweep(platform, lambda t: due.append(str(t))))
        send_passes(due)
        return len(due)

    @app.task(name=PRUNE_TASK)  # type: ignore[untyped-decorator]
    def prune_events() -> dict[str, int]:
        """Remove settled events past `events_retention_days`, in every active tenant."""
        days = settings.events_retention_days
        if days <= 0:
            return {}
        report = _workers.run_in_worker(lambda platform: prune(platform, older_than_s=days * 86400))
        return report.as_dict()

    @app.task(name=MAIL_RETRY_TASK)  # type: ignore[untyped-decorator]
    def retry_mail() -> dict[str, Any]:
        """Send the queued messages that are due (the mail server was down)."""
        return _workers.run_in_worker(retry_due).as_dict()

    @app.task(name=DOMAINS_RECHECK_TASK)  # type: ignore[untyped-decorator]
    def recheck_custom_domains() -> dict[str, list[str]]:
        """Look verified custom domains up again; stop routing those whose record is gone."""
        return _workers.run_in_worker(recheck_domains).as_dict()

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


def _tenant_key(name: str) -> uuid.UUID | str:
    """A task names a tenant by schema (`t_...`, from a nudge) or by id (from the sweep)."""
    return name if name.startswith("t_") else uuid.UUID(name)


def _more(result: DeliveryReport | BaseException) -> bool:
    return isinstance(result, DeliveryReport) and result.more


def celery_app(settings: Settings) -> Celery:
    """The app to send with for these settings: the process's own `app` when the broker and
    key prefix are the same, else one built (once) for them (tests, tools)."""
    key = (settings.redis_url, settings.celery_key_prefix)
    if key == (app_settings.redis_url, app_settings.celery_key_prefix):
        return app
    if key not in _senders:
        _senders[key] = make_celery(settings, current=False)
    return _senders[key]


@beat_init.connect  # type: ignore[untyped-decorator]
def _lead(**_: Any) -> None:
    """Schedule nothing until this beat holds the beat lock: exactly one beat leads."""
    _beat.lead(app_settings)


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
    periodic tick, the heartbeat) and of the relay's passes, which come with every burst
    of events (the pipeline's metrics and `dentalpin events stats` count those):
    "received", "succeeded", "Sending due task". Their warnings and errors still show."""

    NAMES = (
        SWEEP_TASK,
        TICK_TASK,
        HEARTBEAT_TASK,
        DELIVER_TASK,
        "events-sweep",
        "periodic-tick",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        return not any(name in message for name in self.NAMES)


for _logger in ("celery.app.trace", "celery.worker.strategy", "celery.beat"):
    logging.getLogger(_logger).addFilter(_QuietHousekeeping())

app_settings = get_settings()
app = make_celery(app_settings)
