"""The Celery tasks: thin wrappers around :mod:`worker.pipeline_steps`, registered by name.

* ``taskgrouper.start_job(job_id)`` → one ``taskgrouper.finetune(job_id, task)`` per task
  without a stored result (or ``taskgrouper.analyze`` when none is missing);
* ``taskgrouper.finetune(job_id, task)`` → ``taskgrouper.analyze(job_id)``, sent by the one
  fine-tune that claims it;
* ``taskgrouper.sweep()`` (beat, every minute) restarts jobs whose worker or message was lost.

Each wrapper calls its step (which commits), then sends what the step asked for. A message
delivered again after its worker was lost (``redelivered``) counts an attempt of the job.
"""

from __future__ import annotations

import logging
import socket
from functools import lru_cache
from typing import Any

from celery import Task
from sqlalchemy.orm import Session, sessionmaker

from app.db import database_url, make_engine, make_sessionmaker
from app.settings import get_settings
from worker import pipeline_steps as steps
from worker.celery_app import celery_app

__all__ = ["analyze", "finetune", "start_job", "sweep"]

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _sessionmaker() -> sessionmaker[Session]:
    settings = get_settings()
    return make_sessionmaker(make_engine(database_url(settings)), writes=True)


def _context(task: Task[Any, Any]) -> steps.StepContext:
    hostname = getattr(task.request, "hostname", None) or socket.gethostname()
    return steps.StepContext(
        settings=get_settings(), sessionmaker=_sessionmaker(), hostname=str(hostname)
    )


def _redelivered(task: Task[Any, Any]) -> bool:
    info = getattr(task.request, "delivery_info", None) or {}
    return bool(info.get("redelivered") or getattr(task.request, "redelivered", False))


def _send_next(outcome: steps.StartOutcome, job_id: str) -> None:
    for name in outcome.finetune:
        celery_app.send_task("taskgrouper.finetune", args=[job_id, name])
    if outcome.analyze:
        celery_app.send_task("taskgrouper.analyze", args=[job_id])


@celery_app.task(name="taskgrouper.start_job", bind=True)
def start_job(self: Task[Any, Any], job_id: str) -> None:
    outcome = steps.start_job(_context(self), job_id)
    _send_next(outcome, job_id)


@celery_app.task(name="taskgrouper.finetune", bind=True)
def finetune(self: Task[Any, Any], job_id: str, task: str) -> None:
    if steps.finetune(_context(self), job_id, task, redelivered=_redelivered(self)):
        celery_app.send_task("taskgrouper.analyze", args=[job_id])


@celery_app.task(name="taskgrouper.analyze", bind=True)
def analyze(self: Task[Any, Any], job_id: str) -> None:
    steps.analyze(_context(self), job_id, redelivered=_redelivered(self))


@celery_app.task(name="taskgrouper.sweep", bind=True)
def sweep(self: Task[Any, Any]) -> dict[str, list[str]]:
    outcome = steps.sweep(_context(self))
    for job_id in outcome.restart:
        celery_app.send_task("taskgrouper.start_job", args=[job_id])
    if outcome.restart or outcome.failed:
        log.info("sweep: restarted %s, failed %s", outcome.restart, outcome.failed)
    return {"restart": outcome.restart, "failed": outcome.failed}
