"""The Celery application (production mode): Redis broker, no result backend.

Configuration comes from :class:`app.settings.Settings` (``TASKGROUPER_BROKER_URL`` and the
worker settings). The job row in the database is the source of truth for status and progress,
so results are ignored (``task_ignore_result``) and no result backend is configured.

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after its
  task returned, so a task whose worker dies is delivered again (the steps are idempotent, and a
  redelivery counts an attempt of the job).
* ``worker_prefetch_multiplier=1``: a worker reserves one message at a time, so the fine-tunes
  of a job spread over the workers instead of queueing behind one.
* Redis ``visibility_timeout`` above the hard time limit, set in the three places Celery's
  Redis documentation names, so a long fine-tune is never handed to a second worker while the
  first is still running it.
* Routing: the job's tasks (they need the GPU) go to the ``gpu`` queue; the sweep to ``celery``.
* Beat: ``taskgrouper.sweep`` every ``sweep_interval_s`` (60 s; ``taskgrouper worker --beat``
  embeds beat).

Importing this module imports no torch; :mod:`worker.tasks` (imported by the worker at start,
through ``include``) does.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.settings import Settings, get_settings

__all__ = ["GPU_QUEUE", "SWEEP_INTERVAL_S", "celery_app", "celery_config", "make_celery"]

GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "celery"
SWEEP_INTERVAL_S = 60.0  # the default of the sweep_interval_s setting
VISIBILITY_MARGIN_S = 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings``."""
    visibility = settings.task_hard_time_limit + VISIBILITY_MARGIN_S
    return {
        "broker_url": settings.broker_url or "redis://127.0.0.1:6379/0",
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_hard_time_limit,
        "task_soft_time_limit": settings.soft_time_limit,
        "broker_transport_options": {"visibility_timeout": visibility},
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "visibility_timeout": visibility,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": DEFAULT_QUEUE,
        "task_routes": {
            "taskgrouper.start_job": {"queue": GPU_QUEUE},
            "taskgrouper.finetune": {"queue": GPU_QUEUE},
            "taskgrouper.analyze": {"queue": GPU_QUEUE},
            "taskgrouper.sweep": {"queue": DEFAULT_QUEUE},
        },
        "beat_schedule_filename": str(settings.data_dir / "celerybeat-schedule"),
        "beat_schedule": {
            "taskgrouper-sweep": {
                "task": "taskgrouper.sweep",
                "schedule": settings.sweep_interval_s,
            }
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("taskgrouper", include=["worker.tasks"])
    app.conf.update(celery_config(settings))
    return app


celery_app = make_celery()
"""The app the ``celery -A worker.celery_app`` command and ``taskgrouper worker`` run."""
