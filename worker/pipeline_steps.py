"""The job pipeline as plain functions, shared by the Celery tasks and the embedded worker.

``start_job`` → one ``finetune`` per task without a stored result → ``analyze`` (claimed once).
Each function re-loads the job row by id, returns early when its work is already done or the
job is over, commits its writes itself, and *returns* what should run next; the caller (a Celery
task wrapper in :mod:`worker.tasks`, or the embedded loop in :mod:`worker.local`) enqueues it,
so nothing is enqueued before the transaction that makes it valid has committed.

The job row is the source of truth: status, stage, progress (written at most about once a
second; each write is also the heartbeat) and the cancel flag (read at most about once a second
by the training loop's ``should_cancel``). Any exception fails the job with a readable reason;
:class:`models.training.JobCancelled` cancels it.

This module imports torch (through ``models.pipeline``): ``app/`` must never import it at
module level.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.orm import Session

from app import repository
from app.db import database_unavailable
from app.settings import Settings
from app.storage import ArtifactStore
from app.tables import TERMINAL_STATUSES, Job, utcnow
from models import pipeline
from models.artifacts import load_tensors
from models.calibration import Calibration
from models.data import DataError
from models.finetune import SingleTaskResult
from models.options import AnalysisConfig
from models.registry import ModelError
from models.training import JobCancelled, steps_per_task
from worker.jobspec import build_job_spec

__all__ = [
    "PREPARE_SHARE",
    "JobReporter",
    "StartOutcome",
    "StepContext",
    "SweepOutcome",
    "WorkerStopping",
    "analyze",
    "failure_reason",
    "finetune",
    "retrying",
    "start_job",
    "sweep",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

PREPARE_SHARE = 0.02
"""Share of the progress bar given to preparing (as in ``models.pipeline.run_job``)."""
FINETUNE_STAGES = ("prepare", "finetune")
"""Stages a fine-tune may report progress under (never after the analysis was claimed)."""


class WorkerStopping(Exception):
    """The embedded worker is being stopped: the job goes back to ``queued`` to resume later."""


@dataclass
class StepContext:
    """What a step needs: settings, a session factory, and who runs it."""

    settings: Settings
    sessionmaker: Callable[[], Session]
    hostname: str
    stop_requested: Callable[[], bool] | None = None
    """The embedded worker's stop flag; when it says so a step raises :class:`WorkerStopping`."""
    report_interval_s: float = 1.0

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.settings.artifacts)

    def artifact_dir(self, job_id: str) -> Path:
        return self.settings.artifacts / "jobs" / job_id


@dataclass
class StartOutcome:
    """What :func:`start_job` wants run next."""

    finetune: list[str] = field(default_factory=list)
    analyze: bool = False


@dataclass
class SweepOutcome:
    """What :func:`sweep` did: jobs to send to ``start_job`` again, and jobs it failed."""

    restart: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def failure_reason(exc: BaseException) -> str:
    """A readable reason for a failed job: data and model errors as they are."""
    if isinstance(exc, DataError | ModelError):
        return str(exc)
    if type(exc).__name__ == "SoftTimeLimitExceeded":
        return "the job ran past its time limit"
    message = str(exc).strip()
    if isinstance(exc, ValueError) and message:
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class JobReporter:
    """Progress writes and cancel checks for one job, each throttled to ~1 per interval."""

    def __init__(
        self, ctx: StepContext, job_id: str, *, stage_in: Sequence[str] | None = None
    ) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.stage_in = stage_in
        self._last_write = -float("inf")
        self._last_stage: str | None = None
        self._last_check = -float("inf")
        self._stop = False

    def progress(self, stage: str, fraction: float) -> None:
        if stage == "done":  # finish_job(succeeded) sets stage and progress
            return
        now = time.monotonic()
        if stage == self._last_stage and now - self._last_write < self.ctx.report_interval_s:
            return
        self._last_write, self._last_stage = now, stage
        try:
            with self.ctx.sessionmaker() as session:
                repository.update_progress(
                    session=session,
                    job_id=self.job_id,
                    stage=stage,
                    progress=max(0.0, min(1.0, fraction)),
                    stage_in=self.stage_in,
                )
                session.commit()
        except Exception:  # a lost progress write must not fail the job
            log.warning("job %s: progress not written", self.job_id, exc_info=True)

    def should_cancel(self) -> bool:
        if self.ctx.stop_requested is not None and self.ctx.stop_requested():
            raise WorkerStopping("the service is stopping")
        if self._stop:
            return True
        now = time.monotonic()
        if now - self._last_check < self.ctx.report_interval_s:
            return False
        self._last_check = now
        try:
            with self.ctx.sessionmaker() as session:
                self._stop = repository.worker_should_stop(session=session, job_id=self.job_id)
        except Exception:
            log.warning("job %s: cancel flag not read", self.job_id, exc_info=True)
        return self._stop


class _ShareTracker(pipeline.Progress):
    """A ``Progress`` mapping one fine-tune's steps onto [lo, hi] of the whole job's bar."""

    def __init__(self, callback: pipeline.ProgressCallback, lo: float, hi: float) -> None:
        super().__init__(callback, {"finetune": 1.0})
        self.stage = "finetune"
        self.lo, self.hi = lo, hi

    def report(self, step: int, total: int) -> None:
        if self.callback is not None:
            share = step / total if total else 1.0
            self.callback("finetune", min(1.0, self.lo + (self.hi - self.lo) * share))


# --------------------------------------------------------------------------------------------
# helpers


def retrying(ctx: StepContext, what: str, transaction: Callable[[], T]) -> T:
    """Run ``transaction`` (a whole unit of work: its own session, its own commit), again and
    again while the database is unreachable, for up to ``db_retry_s`` seconds (backing off from
    0.5 to 5 s); other errors, and the last unreachable one, propagate."""
    deadline = time.monotonic() + ctx.settings.db_retry_s
    delay = 0.5
    while True:
        try:
            return transaction()
        except Exception as exc:
            if not database_unavailable(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning(
                "database unreachable (%s); %s again in %.1f s", type(exc).__name__, what, delay
            )
            time.sleep(delay)
            delay = min(5.0, delay * 2)


def _same_instant(stored: datetime | None, moment: datetime) -> bool:
    """Whether a stored timestamp is ``moment``, to the microsecond (both databases keep it; naive
    = UTC). Only a retry asks: on a first try an equal timestamp is another delivery's write,
    however close in time."""
    if stored is None:
        return False
    if stored.tzinfo is None:
        stored = stored.replace(tzinfo=UTC)
    return abs((stored - moment).total_seconds()) < 5e-7


def _load(ctx: StepContext, job_id: str) -> Job | None:
    def load() -> Job | None:
        with ctx.sessionmaker() as session:
            return repository.load_job(session=session, job_id=job_id)

    return retrying(ctx, f"loading job {job_id}", load)


def _task_names(job: Job) -> list[str]:
    return [t["name"] for t in (job.request or {}).get("tasks", [])]


def _seed(job: Job) -> int:
    return int(((job.request or {}).get("training") or {}).get("seed", 0))


def _outage_safe(default: Callable[[], R]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A step that meets a database outage outlasting its retries logs it and returns
    ``default()``: the job is left as it is, and the sweep picks it up once the database is
    back (a silent running job is restarted, which counts an attempt; a queued one is sent
    again after ``requeue_after_s``). Other exceptions propagate."""

    def wrap(step: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(step)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return step(*args, **kwargs)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                log.error(
                    "job %s: %s gave up, the database is unreachable (%s); the sweep will "
                    "restart the job",
                    args[1] if len(args) > 1 else kwargs.get("job_id"),
                    getattr(step, "__name__", "a step"),
                    type(exc).__name__,
                )
                return default()

        return guarded

    return wrap


def _finish(ctx: StepContext, job_id: str, status: str, error: str | None = None) -> bool:
    def finish() -> bool:
        with ctx.sessionmaker() as session:
            done = repository.finish_job(session=session, job_id=job_id, status=status, error=error)
            session.commit()
        return done

    changed = retrying(ctx, f"finishing job {job_id}", finish)
    if changed:
        log.info("job %s %s%s", job_id, status, f": {error}" if error else "")
    return changed


def _handle_error(ctx: StepContext, job_id: str, exc: BaseException) -> None:
    """Turn an exception of a step into the job's end (or, when stopping, back to queued)."""
    if isinstance(exc, WorkerStopping):
        with ctx.sessionmaker() as session:
            repository.requeue_job(session=session, job_id=job_id, refund_attempt=True)
            session.commit()
        log.info("job %s put back in the queue: the worker is stopping", job_id)
        raise exc
    if isinstance(exc, JobCancelled):
        _finish(ctx, job_id, "cancelled")
        return
    if database_unavailable(exc):
        # Not the job's fault: the step gives up as a whole (``_outage_safe``) and the sweep
        # restarts the job, keeping its finished fine-tunes, once the database is back.
        raise exc
    log.error("job %s failed", job_id, exc_info=exc)
    _finish(ctx, job_id, "failed", failure_reason(exc))


def _lost_worker(ctx: StepContext, job_id: str) -> bool:
    """A task came back after its worker was lost: count the attempt, or fail the job.

    Returns ``True`` when the job was failed (attempts used up).
    """
    with ctx.sessionmaker() as session:
        job = repository.load_job(session=session, job_id=job_id)
        if job is None or job.status != "running":
            return False
        if job.attempts >= ctx.settings.max_attempts:
            attempts = job.attempts
        else:
            repository.record_attempt(session=session, job_id=job_id)
            session.commit()
            return False
    _finish(ctx, job_id, "failed", f"worker lost {attempts} times")
    return True


_PREPARED: dict[str, pipeline.PreparedJob] = {}
"""The last prepared job of this process (data, tokens, base model): consecutive steps of one
job on one worker prepare it once."""


def _prepared(ctx: StepContext, job: Job) -> pipeline.PreparedJob:
    cached = _PREPARED.get(job.id)
    if cached is None:
        spec = build_job_spec(job, ctx.settings, ctx.store)
        cached = pipeline.prepare(spec)
        _PREPARED.clear()
        _PREPARED[job.id] = cached
    cached.stl = {}
    cached.spec.analysis = _calibrated(ctx, cached.spec.analysis)
    return cached


def _calibrated(ctx: StepContext, analysis: AnalysisConfig) -> AnalysisConfig:
    """The analysis settings with the calibration in force: the newest one ``taskgrouper
    calibrate`` stored, else the shipped default already in ``analysis``."""
    with ctx.sessionmaker() as session:
        row = repository.latest_calibration(session=session)
    if row is None:
        return analysis
    return dataclasses.replace(analysis, calibration=Calibration.from_dict(row.body))


def _finetune_plan(job: pipeline.PreparedJob) -> tuple[float, float, dict[str, int]]:
    """Where the fine-tunes sit on the job's bar (as ``run_job`` plans it), and each budget."""
    cfg = job.spec.training
    budgets = {n: steps_per_task(len(t.train_ids), cfg) for n, t in job.tokenized.items()}
    stl = float(sum(budgets.values()))
    rest = 0.02 * stl + (0.15 * stl + 1) + 0.01 * stl + (stl if job.spec.verify else 0.0)
    span = (1.0 - PREPARE_SHARE) * stl / (stl + rest) if stl + rest else 0.0
    return PREPARE_SHARE, PREPARE_SHARE + span, budgets


def _done_tasks(session: Session, job_id: str, seed: int) -> set[str]:
    return {
        r.task
        for r in repository.get_task_results(session=session, job_id=job_id)
        if r.seed == seed
    }


def _claim_if_complete(ctx: StepContext, job: Job) -> bool:
    """When every task has a result, claim the analysis; ``True`` for the one caller that wins."""

    claimed_at = utcnow()  # the same on every try: a retry recognises its own claim
    tries = itertools.count(1)  # a retry: a write of an earlier try may have committed

    def claim() -> bool:
        retry = next(tries) > 1
        with ctx.sessionmaker() as session:
            if not set(_task_names(job)) <= _done_tasks(session, job.id, _seed(job)):
                return False
            claimed = repository.claim_analysis(session=session, job_id=job.id, now=claimed_at)
            if not claimed and retry:  # an earlier try's claim may have committed
                row = repository.load_job(session=session, job_id=job.id)
                claimed = (
                    row is not None
                    and row.stage == "similarity"
                    and _same_instant(row.heartbeat_at, claimed_at)
                )
            session.commit()
        return claimed

    return retrying(ctx, f"claiming the analysis of job {job.id}", claim)


# --------------------------------------------------------------------------------------------
# the steps


@_outage_safe(StartOutcome)
def start_job(ctx: StepContext, job_id: str, *, now: datetime | None = None) -> StartOutcome:
    """Take a queued job (or restart one whose worker was lost): mark it running, check its
    datasets, and say which fine-tunes to run (or that the analysis can run).

    A job that is running with a fresh heartbeat is left alone (a duplicate message): only a
    queued job or a running one silent for ``heartbeat_timeout_s`` is (re)started; a restart
    counts an attempt and fails the job with "worker lost N times" once ``max_attempts`` starts
    have been lost.
    """
    now = now or utcnow()
    timeout = timedelta(seconds=ctx.settings.heartbeat_timeout_s)

    tries = itertools.count(1)  # a retry: a write of an earlier try may have committed

    def take() -> tuple[Job | None, str | None]:
        """Mark the job running; the job (None: nothing to do) and what ends it instead."""
        retry = next(tries) > 1
        with ctx.sessionmaker() as session:
            job = repository.load_job(session=session, job_id=job_id)
            if job is None or job.status in TERMINAL_STATUSES:
                return None, None
            if job.status == "running":
                if retry and _same_instant(job.heartbeat_at, now):
                    # Our own mark_running, committed on an earlier try whose reply was lost.
                    return job, None
                last = job.heartbeat_at or job.started_at or job.created_at
                if now - last < timeout:
                    return None, None  # another delivery is running it
                if job.attempts >= ctx.settings.max_attempts:
                    return None, f"worker lost {job.attempts} times"
            if not repository.mark_running(session=session, job_id=job_id, now=now):
                session.commit()
                return None, "cancelled" if job.cancel_requested else None
            session.commit()
            return repository.load_job(session=session, job_id=job_id), None

    job, ending = retrying(ctx, f"starting job {job_id}", take)
    if ending == "cancelled":
        _finish(ctx, job_id, "cancelled")
    elif ending is not None:
        _finish(ctx, job_id, "failed", ending)
    if job is None:
        return StartOutcome()
    stage = job.stage
    try:
        spec = build_job_spec(job, ctx.settings, ctx.store)
        names = [t.name for t in spec.tasks]
        with ctx.sessionmaker() as session:
            pending = [n for n in names if n not in _done_tasks(session, job_id, _seed(job))]
            repository.update_progress(
                session=session,
                job_id=job_id,
                stage="finetune",
                progress=PREPARE_SHARE,
                stage_in=FINETUNE_STAGES,
            )
            session.commit()
        if pending:
            log.info("job %s: fine-tuning %s", job_id, ", ".join(pending))
            return StartOutcome(finetune=pending)
        if _claim_if_complete(ctx, job):
            return StartOutcome(analyze=True)
        # Restarted after its analysis was claimed by a worker that was lost: run it again.
        return StartOutcome(analyze=stage not in (None, *FINETUNE_STAGES))
    except Exception as exc:
        _handle_error(ctx, job_id, exc)
        return StartOutcome()


@_outage_safe(lambda: False)
def finetune(ctx: StepContext, job_id: str, task: str, *, redelivered: bool = False) -> bool:
    """Fine-tune one task of a running job and store its result (skipped if stored already).

    Returns ``True`` when this call claimed the analysis (every task now has a result): the
    caller runs :func:`analyze` next.
    """
    job = _load(ctx, job_id)
    if job is None or job.status != "running":
        return False
    if job.cancel_requested:
        _finish(ctx, job_id, "cancelled")
        return False
    seed = _seed(job)

    def stored() -> set[str]:
        with ctx.sessionmaker() as session:
            return _done_tasks(session, job_id, seed)

    done = retrying(ctx, f"reading job {job_id}'s fine-tunes", stored)
    if task not in done:
        if redelivered and _lost_worker(ctx, job_id):
            return False
        reporter = JobReporter(ctx, job_id, stage_in=FINETUNE_STAGES)
        try:
            prepared = _prepared(ctx, job)
            if task not in prepared.tokenized:
                raise ValueError(f"job {job_id} has no task {task!r}")
            lo, hi, budgets = _finetune_plan(prepared)
            total = sum(budgets.values()) or 1
            offset = sum(b for n, b in budgets.items() if n in done)
            tracker = _ShareTracker(
                reporter.progress,
                lo + (hi - lo) * offset / total,
                lo + (hi - lo) * (offset + budgets[task]) / total,
            )
            pipeline.run_finetunes(
                prepared,
                tracker,
                reporter.should_cancel,
                ctx.artifact_dir(job_id),
                names=[task],
                seeds=[seed],
            )
            result = prepared.stl[task][-1]

            def save() -> None:  # a finished fine-tune is worth waiting for the database
                with ctx.sessionmaker() as session:
                    repository.save_task_result(
                        session=session,
                        job_id=job_id,
                        task=task,
                        seed=seed,
                        macro_f1=result.macro_f1,
                        accuracy=result.accuracy,
                        steps=result.steps,
                        seconds=result.seconds,
                        metrics={"record": result.to_record(), "hostname": ctx.hostname},
                        weights_path=result.weights_path,
                        reps_path=result.reps_path,
                    )
                    session.commit()

            retrying(ctx, f"saving job {job_id}'s fine-tune of {task!r}", save)
            log.info("job %s: task %r fine-tuned on %s", job_id, task, ctx.hostname)
        except Exception as exc:
            _handle_error(ctx, job_id, exc)
            return False
    return _claim_if_complete(ctx, job)


def _pair_rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "task_a": p["tasks"][0],
            "task_b": p["tasks"][1],
            "cka_per_layer": p["cka_per_layer"],
            "cka_min": p["cka_min"],
            "cka_min_layer": p["cka_min_layer"],
            "cka_mean": p["cka_mean"],
            "grad_cosine": p["grad_cosine"],
            "grad_cosine_per_layer": p["grad_cosine_per_layer"],
            "conflict_rate": p["conflict_rate"],
            "tag_ab": p["tag_affinity"][0],
            "tag_ba": p["tag_affinity"][1],
        }
        for p in rec["pairs"]
    ]


@_outage_safe(lambda: None)
def analyze(ctx: StepContext, job_id: str, *, redelivered: bool = False) -> None:
    """Stages 2-5 on the stored fine-tunes; store pair metrics and the recommendation; succeed."""
    job = _load(ctx, job_id)
    if job is None or job.status != "running":
        return
    if job.cancel_requested:
        _finish(ctx, job_id, "cancelled")
        return
    with ctx.sessionmaker() as session:
        stored = repository.get_recommendation(session=session, owner=job.owner, job_id=job_id)
    if stored is not None:  # done before, the finish was lost
        _finish(ctx, job_id, "succeeded")
        return
    if redelivered and _lost_worker(ctx, job_id):
        return
    reporter = JobReporter(ctx, job_id)
    try:
        prepared = _prepared(ctx, job)
        seed = prepared.spec.training.seed
        with ctx.sessionmaker() as session:
            results = repository.get_task_results(session=session, job_id=job_id)
        finetune_seconds = 0.0
        for row in results:
            if row.seed != seed or row.task not in prepared.tokenized:
                continue
            if not row.reps_path:
                raise ValueError(f"task {row.task!r}: its stored result has no representations")
            reps = load_tensors(Path(row.reps_path))["reps"]
            record = dict(row.metrics["record"])
            prepared.stl[row.task] = [SingleTaskResult.from_record(record, reps)]
            finetune_seconds += row.seconds
        _, start_fraction, _ = _finetune_plan(prepared)
        rec = pipeline.analyze(
            prepared,
            progress=reporter.progress,
            start_fraction=start_fraction,
            should_cancel=reporter.should_cancel,
        )
        # The fine-tunes ran as separate tasks (maybe in parallel): their summed seconds.
        analysis = {k: float(v) for k, v in rec["timings"].items()}
        timings = {"finetune": finetune_seconds, **analysis}
        timings["total"] = analysis.get("total", 0.0) + finetune_seconds
        rec["timings"] = timings

        def save() -> bool:  # all or nothing: no partial rows
            with ctx.sessionmaker() as session:
                repository.save_pair_metrics(session=session, job_id=job_id, pairs=_pair_rows(rec))
                repository.save_recommendation(session=session, job_id=job_id, body=rec)
                repository.update_progress(
                    session=session,
                    job_id=job_id,
                    stage="grouping",
                    progress=1.0,
                    timings=timings,
                )
                done = repository.finish_job(session=session, job_id=job_id, status="succeeded")
                if done:
                    session.commit()
                else:  # cancelled or failed meanwhile: keep it that way, store nothing
                    session.rollback()
            return done

        finished = retrying(ctx, f"saving job {job_id}'s recommendation", save)
        _PREPARED.pop(job_id, None)
        log.info("job %s %s", job_id, "succeeded" if finished else "ended meanwhile")
    except Exception as exc:
        _handle_error(ctx, job_id, exc)


def sweep(ctx: StepContext, *, now: datetime | None = None) -> SweepOutcome:
    """Find jobs whose worker or queue message was lost.

    * running jobs without a heartbeat for ``heartbeat_timeout_s``: restart (``start_job``)
      while ``attempts < max_attempts``, else fail with "worker lost N times";
    * queued jobs older than ``requeue_after_s`` (and not re-sent within
      ``heartbeat_timeout_s``): send ``start_job`` again (it is idempotent: a duplicate message
      finds the job running).
    """
    now = now or utcnow()
    out = SweepOutcome()
    with ctx.sessionmaker() as session:
        stale = repository.stale_running_jobs(
            session=session, older_than=now - timedelta(seconds=ctx.settings.heartbeat_timeout_s)
        )
        for job in stale:
            if job.attempts >= ctx.settings.max_attempts:
                if repository.finish_job(
                    session=session,
                    job_id=job.id,
                    status="failed",
                    error=f"worker lost {job.attempts} times",
                    now=now,
                ):
                    out.failed.append(job.id)
            else:
                out.restart.append(job.id)
        queued = repository.stale_queued_jobs(
            session=session, older_than=now - timedelta(seconds=ctx.settings.requeue_after_s)
        )
        resend = now - timedelta(seconds=ctx.settings.heartbeat_timeout_s)
        for job in queued:
            if job.heartbeat_at is None or job.heartbeat_at < resend:
                repository.mark_requeued(session=session, job_id=job.id, now=now)
                out.restart.append(job.id)
        session.commit()
    return out
