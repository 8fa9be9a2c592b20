"""The Celery application: Redis broker, the three queues, one event loop per worker process.

The lifecycle and event tasks arrive with the events issue; this module fixes the
queues and worker settings they will use, so `dentalpin worker` and `dentalpin beat`
are real processes from the start.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from ._settings import get_settings

QUEUES = ("events", "lifecycle", "periodic")


def make_celery() -> Celery:
    settings = get_settings()
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("dentalpin", broker=broker, backend=None)
    app.conf.update(
        # Queues are declared on first use (task_create_missing_queues); workers pick with -Q.
        task_default_queue="events",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"socket_timeout": 2, "socket_connect_timeout": 2},
        beat_schedule={
            "platform-heartbeat": {
                "task": "dentalpin.platform.heartbeat",
                "schedule": 60.0,
                "options": {"queue": "periodic"},
            },
        },
        timezone="UTC",
    )

    @app.task(name="dentalpin.platform.heartbeat")  # type: ignore[untyped-decorator]
    def heartbeat() -> dict[str, Any]:
        """Proves the beat -> broker -> worker path works; shows up in worker logs."""
        return {"ok": True}

    return app


app = make_celery()
