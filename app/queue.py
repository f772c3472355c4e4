"""How the API hands a job to whatever runs it.

The API only needs :class:`JobQueue`: ``enqueue(job_id)`` is called once, after the transaction
that created the job has committed (so a worker picking the id up always finds the row). Two
implementations come with the workers:

* :class:`CeleryQueue` (production): sends ``taskgrouper.start_job`` *by name* to the ``gpu``
  queue of the broker, so the API process never imports the worker code (nor torch);
* :class:`LocalQueue` (embedded mode): one background worker process, started with the
  ``spawn`` method (the API process never imports torch), that takes queued jobs from the
  database and runs them one at a time; ``enqueue`` only wakes it — the database is the queue.

:class:`NullQueue` only records ids; the API tests use it.

A queue may also have ``ping() -> None`` (raise, or return ``False``, when the broker cannot be
reached); ``GET /readyz`` calls it when present. :class:`PingableQueue` describes that shape.
A queue with ``start()`` / ``stop()`` is started and stopped with the app (its lifespan).
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess
    from multiprocessing.synchronize import Event

    from app.settings import Settings


__all__ = ["CeleryQueue", "JobQueue", "LocalQueue", "NullQueue", "PingableQueue"]

log = logging.getLogger(__name__)

START_JOB_TASK = "taskgrouper.start_job"
GPU_QUEUE = "gpu"


@runtime_checkable
class JobQueue(Protocol):
    """Something that makes a committed, queued job run eventually."""

    def enqueue(self, job_id: str) -> None:
        """Schedule the job ``job_id``; raise if it cannot be scheduled."""
        ...


@runtime_checkable
class PingableQueue(JobQueue, Protocol):
    """A queue whose broker can be checked (``GET /readyz``)."""

    def ping(self) -> bool | None:
        """Return ``None``/``True`` when the broker is reachable; raise or return ``False``."""
        ...


class NullQueue:
    """Records the ids it is given and runs nothing (tests; an API without workers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.enqueued: list[str] = []

    def enqueue(self, job_id: str) -> None:
        with self._lock:
            self.enqueued.append(job_id)

    def ping(self) -> None:
        return None


class CeleryQueue:
    """Sends ``taskgrouper.start_job(job_id)`` by name to the broker's ``gpu`` queue."""

    def __init__(self, broker_url: str, *, queue: str = GPU_QUEUE) -> None:
        from celery import Celery

        self.broker_url = broker_url
        self.queue = queue
        self._app = Celery("taskgrouper-api", broker=broker_url)
        self._app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            task_ignore_result=True,
            broker_connection_retry_on_startup=True,
        )

    def enqueue(self, job_id: str) -> None:
        self._app.send_task(
            START_JOB_TASK,
            args=[job_id],
            queue=self.queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    def ping(self) -> None:
        """Connect to the broker (raises when it cannot be reached)."""
        with self._app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)

    def close(self) -> None:
        self._app.close()


class LocalQueue:
    """Embedded mode: one worker process beside the API, the database as its queue.

    :meth:`start` spawns the process (``spawn``: a fresh interpreter, so neither torch nor CUDA
    ever enters the API process). It first puts jobs left ``running`` by a previous run back to
    ``queued`` (or fails them once ``max_attempts`` starts were lost), then runs queued jobs
    oldest first, each in-process: start → every fine-tune → analysis (the same step functions
    the Celery tasks call). :meth:`enqueue` only wakes it. :meth:`stop` asks it to stop: a
    running job stops at its next cancel check (about a second) and goes back to ``queued``,
    to resume — finished fine-tunes kept — when the service starts again; a worker that does
    not stop within ``stop_grace_s`` is terminated (its job is re-queued at the next start).
    """

    def __init__(
        self, settings: Settings, *, poll_interval_s: float = 5.0, stop_grace_s: float = 15.0
    ) -> None:
        self.settings = settings
        self.poll_interval_s = poll_interval_s
        self.stop_grace_s = stop_grace_s
        self._mp = multiprocessing.get_context("spawn")
        self._wake: Event = self._mp.Event()
        self._stop: Event = self._mp.Event()
        self._process: SpawnProcess | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        from worker.local import run_local_worker  # torch-free module; torch loads in the child

        with self._lock:
            if self._process is not None and self._process.is_alive():
                return
            self._stop.clear()
            process = self._mp.Process(
                target=run_local_worker,
                args=(self.settings, self._wake, self._stop, self.poll_interval_s),
                name="taskgrouper-local-worker",
                daemon=True,
            )
            process.start()
            self._process = process
            log.info("local worker started (pid %s)", process.pid)

    def enqueue(self, job_id: str) -> None:
        if self._process is None or not self._process.is_alive():
            raise RuntimeError("the local worker is not running")
        self._wake.set()

    def ping(self) -> None:
        if self._process is None or not self._process.is_alive():
            raise RuntimeError("the local worker is not running")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        self._stop.set()
        self._wake.set()
        process.join(self.stop_grace_s)
        if process.is_alive():
            log.warning("local worker did not stop in %.0f s; terminating it", self.stop_grace_s)
            process.terminate()
            process.join(5)
        log.info("local worker stopped")

    def __del__(self) -> None:  # best effort; the app's lifespan calls stop()
        process: Any = getattr(self, "_process", None)
        if process is not None and process.is_alive():
            process.terminate()
