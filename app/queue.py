"""How the API hands a job to whatever runs it.

The API only needs :class:`JobQueue`: ``enqueue(job_id)`` is called once, after the transaction
that created the job has committed (so a worker picking the id up always finds the row). Two
implementations come with the workers: a Celery one (production) and an embedded local worker.
:class:`NullQueue` only records ids; the API tests use it.

A queue may also have ``ping() -> None`` (raise, or return ``False``, when the broker cannot be
reached); ``GET /readyz`` calls it when present. :class:`PingableQueue` describes that shape.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

__all__ = ["JobQueue", "NullQueue", "PingableQueue"]


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
