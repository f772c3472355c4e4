"""The embedded worker: one process beside the API (embedded mode), the database as its queue.

Started by :class:`app.queue.LocalQueue` with the ``spawn`` method; this module imports no
torch at module level (the API process imports it to name the process target), the steps are
imported inside :func:`run_local_worker`, in the child.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

    from app.settings import Settings
    from worker.pipeline_steps import StepContext

__all__ = ["recover", "run_job_locally", "run_local_worker"]

log = logging.getLogger(__name__)


def recover(ctx: StepContext) -> None:
    """Jobs left ``running`` by a previous run go back to ``queued`` (or fail, attempts spent)."""
    from app import repository
    from app.tables import utcnow

    with ctx.sessionmaker() as session:
        for job in repository.stale_running_jobs(session=session, older_than=utcnow()):
            if job.attempts >= ctx.settings.max_attempts:
                repository.finish_job(
                    session=session,
                    job_id=job.id,
                    status="failed",
                    error=f"worker lost {job.attempts} times",
                )
                log.warning("job %s failed: worker lost %s times", job.id, job.attempts)
            else:
                repository.requeue_job(session=session, job_id=job.id)
                log.info("job %s left running by a previous run: queued again", job.id)
        session.commit()


def run_job_locally(ctx: StepContext, job_id: str) -> None:
    """start → each fine-tune → analysis, in this process (the Celery tasks' steps)."""
    from worker import pipeline_steps as steps

    outcome = steps.start_job(ctx, job_id)
    analyze = outcome.analyze
    for task in outcome.finetune:
        analyze = steps.finetune(ctx, job_id, task) or analyze
    if analyze:
        steps.analyze(ctx, job_id)


def run_local_worker(
    settings: Settings, wake: Event, stop: Event, poll_interval_s: float = 5.0
) -> None:
    """The worker process's main loop (until ``stop`` is set)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    from app import repository
    from app.db import database_url, make_engine, make_sessionmaker
    from worker import pipeline_steps as steps

    engine = make_engine(database_url(settings))
    ctx = steps.StepContext(
        settings=settings,
        sessionmaker=make_sessionmaker(engine, writes=True),
        hostname=f"local@{socket.gethostname()}",
        stop_requested=stop.is_set,
    )
    try:
        recover(ctx)
        while not stop.is_set():
            wake.clear()
            try:
                with ctx.sessionmaker() as session:
                    job_id = repository.next_queued_job(session=session)
                if job_id is None:
                    wake.wait(poll_interval_s)
                    continue
                run_job_locally(ctx, job_id)
            except steps.WorkerStopping:
                break
            except Exception:
                log.exception("local worker: unexpected error; retrying shortly")
                stop.wait(min(poll_interval_s, 2.0))
    finally:
        engine.dispose()
