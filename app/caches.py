"""In-process caches of the API: checked API keys, and rendered recommendations.

Both spare the database and the CPU on the hot read paths (``GET /jobs/{id}``, ``GET
/recommendations/{id}`` under load) and both are per process: each API worker process has its own.

* :class:`ApiKeyCache`: the owner of each key seen to be live in the last ``ttl_s`` seconds,
  by the key's SHA-256. Revoking keys in this process (:func:`app.repository.revoke_api_key`)
  empties every key cache of the process at once and again when the revocation commits; a key
  revoked by another process (``taskgrouper keys revoke``) stops working here within ``ttl_s``.
  ``ttl_s = 0`` turns the cache off: every request checks the database.
* :class:`RecommendationCache`: the JSON bytes answered for a succeeded job's recommendation,
  with the job's owner. A recommendation is written once, when its job succeeds; a succeeded job
  never changes and is never deleted, so an entry stays true: a hit needs no database read.

No FastAPI here: the repository (which the workers import too) calls :func:`forget_api_keys`.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict

__all__ = ["ApiKeyCache", "RecommendationCache", "forget_api_keys"]

_key_caches: weakref.WeakSet[ApiKeyCache] = weakref.WeakSet()
_key_caches_lock = threading.Lock()


class ApiKeyCache:
    """Owner by API-key digest, each entry trusted for ``ttl_s`` seconds; live keys only."""

    def __init__(self, ttl_s: float, *, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str, float]] = {}  # digest -> (owner, expires)
        with _key_caches_lock:
            _key_caches.add(self)

    def get(self, digest: str) -> str | None:
        """The key's owner if it was seen live less than ``ttl_s`` ago, else ``None``."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        owner, expires = entry
        if time.monotonic() >= expires:
            self._entries.pop(digest, None)
            return None
        return owner

    def put(self, digest: str, owner: str) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # only live keys land here: this is a misuse guard
        self._entries[digest] = (owner, time.monotonic() + self.ttl_s)

    def clear(self) -> None:
        self._entries.clear()


def forget_api_keys() -> None:
    """Empty every :class:`ApiKeyCache` of this process (a key was revoked)."""
    with _key_caches_lock:
        caches = list(_key_caches)
    for cache in caches:
        cache.clear()


class RecommendationCache:
    """The most recently used rendered recommendations, up to ``max_bytes`` in all, each with
    the owner of its job: only that owner gets it from here."""

    def __init__(self, max_bytes: int = 32 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, job_id: str, owner: str) -> bytes | None:
        """The rendered recommendation of ``owner``'s succeeded job, if this process has it."""
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None or entry[0] != owner:
                return None
            self._entries.move_to_end(job_id)
            return entry[1]

    def put(self, job_id: str, owner: str, body: bytes) -> None:
        """Keep a succeeded job's rendered recommendation (never anything else: see above)."""
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(job_id, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._entries[job_id] = (owner, body)
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= len(evicted)
