"""A client of the service's REST API, and the ``taskgrouper submit/show/cancel/report`` commands.

:class:`ServiceClient` wraps the routes a user calls (upload, submit, follow, show, cancel,
recommendation) over httpx; every error answer becomes a :class:`ServiceError` carrying the
API's message (which names the field at fault). It imports no torch: it runs wherever Python
and httpx do.

The server and key come from ``--server`` / ``--key`` or the environment
(``TASKGROUPER_SERVER``, default ``http://127.0.0.1:8000``; ``TASKGROUPER_KEY``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

__all__ = [
    "COMMANDS",
    "DEFAULT_SERVER",
    "FAST_STEP_FRACTION",
    "TERMINAL",
    "ProgressBar",
    "ServiceClient",
    "ServiceError",
    "add_client_commands",
    "run_client_command",
    "training_options",
]

DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
EXIT_FAILED = 1
EXIT_USAGE = 2


class ServiceError(Exception):
    """An error answer from the service (status and its message), or no answer at all."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class OutputError(Exception):
    """The result could not be written where ``--out`` says."""


def _id(job_id: str) -> str:
    """An id as one path segment, whatever the user typed."""
    if not job_id.strip():
        raise ValueError("ID: the job id is empty")
    return quote(job_id.strip(), safe="")


class ServiceClient:
    """The REST API for one server and key."""

    def __init__(
        self,
        server: str,
        key: str | None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.server = server.rstrip("/")
        self.http = httpx.Client(
            base_url=self.server, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceError(None, f"cannot reach {self.server}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500] or response.reason_phrase
            raise ServiceError(response.status_code, f"HTTP {response.status_code}: {message}")
        return response

    def upload(self, path: Path) -> dict[str, Any]:
        """``POST /datasets``: the dataset, with its columns and label columns."""
        with path.open("rb") as handle:
            response = self._call("POST", "/datasets", files={"file": (path.name, handle)})
        return dict(response.json())

    def delete_dataset(self, dataset_id: str) -> None:
        """``DELETE /datasets/{id}``."""
        self._call("DELETE", f"/datasets/{_id(dataset_id)}")

    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """``POST /jobs``: the queued job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(self._call("POST", "/jobs", json=body, headers=headers).json())

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/jobs/{_id(job_id)}").json())

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/jobs/{_id(job_id)}/cancel").json())

    def recommendation(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/recommendations/{_id(job_id)}").json())

    def follow(
        self,
        job_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        unreachable_s: float = 300.0,
    ) -> dict[str, Any]:
        """Poll the job until it is succeeded, failed or cancelled; the last state.

        ``on_progress`` sees every state polled. A poll that cannot reach the server, or gets a
        502/503/504 (a restart, a database outage), is tried again; after ``unreachable_s`` of
        nothing but such failures the last one is raised. ``TimeoutError`` after ``timeout_s``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        failing_since: float | None = None
        while True:
            try:
                job = self.job(job_id)
                failing_since = None
            except ServiceError as exc:
                if exc.status is not None and exc.status not in (502, 503, 504):
                    raise
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > unreachable_s:
                    raise
                job = None
            if job is not None:
                if on_progress is not None:
                    on_progress(job)
                if job["status"] in TERMINAL:
                    return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f} s")
            time.sleep(poll_s)


class ProgressBar:
    """Stage and percent of a job: a redrawn bar on a terminal, a line per change elsewhere."""

    WIDTH = 30

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last: tuple[str, str, int] | None = None

    def __call__(self, job: dict[str, Any]) -> None:
        pct = round(100 * float(job.get("progress") or 0.0))
        stage = job.get("stage") or "-"
        status = job["status"]
        if self.tty:
            filled = self.WIDTH * pct // 100
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            end = "\n" if status in TERMINAL else ""
            self.stream.write(f"\r[{bar}] {pct:3d}% {status:<9} {stage:<14}{end}")
            self.stream.flush()
            return
        # One line per stage or status change and per 5 percent, so logs stay short.
        state = (status, stage, pct // 5)
        if state != self.last:
            print(f"[{pct:3d}%] {status:<9} {stage}", file=self.stream, flush=True)
            self.last = state


# --------------------------------------------------------------------------------------------
# the commands


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _candidate(value: str) -> list[list[str]]:
    return [_split(group) for group in value.split(";") if group.strip()]


def _server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("TASKGROUPER_SERVER", DEFAULT_SERVER),
        help="the service's base URL (default: $TASKGROUPER_SERVER or %(default)s)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("TASKGROUPER_KEY"),
        help="your API key (default: $TASKGROUPER_KEY)",
    )


def add_client_commands(sub: Any) -> None:
    """Add ``submit``, ``show``, ``cancel`` and ``report`` to the CLI's subcommands."""
    su = sub.add_parser(
        "submit",
        help="upload a dataset to a server, submit a job, follow it and print the result",
        description="Upload DATA, submit a job on its tasks, follow the job's progress (stage "
        "and percent) and print the recommendation's summary when it has succeeded.",
    )
    su.add_argument("data", metavar="DATA", type=Path, help="a CSV, JSONL or Parquet file")
    su.add_argument("--text-column", required=True)
    su.add_argument("--tasks", required=True, type=_split, help="comma-separated label columns")
    su.add_argument("--model", default="minilm-l6", help="a model name the server registers")
    su.add_argument("--candidate", action="append", type=_candidate, default=[])
    su.add_argument("--epochs", type=int, default=None)
    su.add_argument("--max-steps", type=int, default=None)
    su.add_argument("--step-fraction", type=float, default=None)
    su.add_argument("--fast", action="store_true", help="fast mode: --step-fraction 0.25")
    su.add_argument("--lr", type=float, default=None)
    su.add_argument("--batch-size", type=int, default=None)
    su.add_argument("--max-length", type=int, default=None)
    su.add_argument("--probe-size", type=int, default=None)
    su.add_argument("--seed", type=int, default=None)
    su.add_argument(
        "--class-weights",
        choices=("none", "balanced"),
        default=None,
        help="balanced: weigh each class of a task's loss by n / (K n_k), for imbalanced tasks",
    )
    su.add_argument("--verify", action="store_true")
    su.add_argument("--max-groups", type=int, default=None)
    su.add_argument("--idempotency-key", default=None, help="makes a retried submit safe")
    su.add_argument("--no-wait", action="store_true", help="print the job id and return")
    su.add_argument("--out", type=Path, default=None, help="write the recommendation JSON here")
    su.add_argument("--quiet", action="store_true", help="no progress bar")
    _server_args(su)

    sh = sub.add_parser("show", help="show a job and, once it has succeeded, its recommendation")
    sh.add_argument("job_id", metavar="ID")
    sh.add_argument(
        "--json",
        action="store_true",
        help="print the JSON (the recommendation when there is one, else the job)",
    )
    sh.add_argument("--follow", action="store_true", help="follow the job until it finishes")
    _server_args(sh)

    ca = sub.add_parser("cancel", help="cancel a queued or running job")
    ca.add_argument("job_id", metavar="ID")
    _server_args(ca)

    re = sub.add_parser(
        "report",
        help="write a job's report page as one HTML file (or open it)",
        description="Fetch the recommendation and write its report as a self-contained HTML "
        "file (styles inline, charts as SVG): it opens offline.",
    )
    re.add_argument("job_id", metavar="ID")
    re.add_argument("--out", type=Path, default=None, help="default: report-<ID>.html")
    re.add_argument("--open", action="store_true", help="open the file in a web browser")
    _server_args(re)


FAST_STEP_FRACTION = 0.25
"""``--fast``: every model trains for this share of its steps (README, 'How good is the
verdict?', measures what it costs)."""


def training_options(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings given on a command line (``analyze``, ``submit``): the ones set,
    with ``--fast`` as ``step_fraction`` unless that is given too."""
    from models.options import TRAINING_KEYS

    training = {k: getattr(args, k) for k in TRAINING_KEYS if getattr(args, k) is not None}
    if args.fast and "step_fraction" not in training:
        training["step_fraction"] = FAST_STEP_FRACTION
    return training


def _print_job(job: dict[str, Any]) -> None:
    pct = round(100 * float(job.get("progress") or 0.0))
    tasks = ", ".join(t["name"] for t in job.get("tasks", []))
    print(f"job {job['id']}: {job['status']}, stage {job.get('stage') or '-'}, {pct}%")
    print(f"  model {job.get('model')}; tasks {tasks}")
    if job.get("cancel_requested") and job["status"] not in TERMINAL:
        print("  cancel requested")
    if job.get("error"):
        print(f"  error: {job['error']}")


def _out_problem(out: Path | None) -> str | None:
    """Why ``--out`` cannot be written, checked before any work (a job may run for hours)."""
    if out is None:
        return None
    if out.is_dir():
        return f"{out} is a folder; give a file name"
    parent = next((p for p in out.resolve().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"{parent} is a file, not a folder"
    return None


def _write_out(out: Path, text: str) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"--out: cannot write {out}: {exc.strerror or exc}") from None


def cmd_submit(client: ServiceClient, args: argparse.Namespace) -> int:
    if not args.data.is_file():
        print(f"error: DATA: no such file: {args.data}", file=sys.stderr)
        return EXIT_USAGE
    if (problem := _out_problem(args.out)) is not None:
        print(f"error: --out: {problem}", file=sys.stderr)
        return EXIT_USAGE
    for option in ("lr", "step_fraction"):
        value = getattr(args, option)
        if value is not None and not math.isfinite(value):
            flag = "--" + option.replace("_", "-")
            print(f"error: {flag}: must be a finite number, not {value}", file=sys.stderr)
            return EXIT_USAGE
    dataset = client.upload(args.data)
    print(f"uploaded {args.data.name}: dataset {dataset['id']}", file=sys.stderr)
    body: dict[str, Any] = {
        "dataset_id": dataset["id"],
        "text_column": args.text_column,
        "tasks": args.tasks,
        "model": args.model,
        "verify": bool(args.verify),
    }
    if training := training_options(args):
        body["training"] = training
    if args.candidate:
        body["candidate_task_sets"] = args.candidate
    if args.max_groups is not None:
        body["max_groups"] = args.max_groups
    try:
        job = client.submit(body, idempotency_key=args.idempotency_key)
    except ServiceError as exc:
        # A refused job leaves its upload unused: remove it, so a retry after a typo does not
        # pile up copies. An error with no answer, or a 5xx, may hide a job that was created.
        if exc.status is not None and 400 <= exc.status < 500:
            try:
                client.delete_dataset(dataset["id"])
                print(f"removed the upload (dataset {dataset['id']})", file=sys.stderr)
            except ServiceError as again:
                print(
                    f"could not remove the upload (dataset {dataset['id']}): {again.message}",
                    file=sys.stderr,
                )
        raise
    print(
        f"job {job['id']} submitted: {len(args.tasks)} tasks, model {args.model}", file=sys.stderr
    )
    if args.no_wait:
        print(job["id"])
        return 0
    return _finish(client, job["id"], args.quiet, args.out)


def _finish(client: ServiceClient, job_id: str, quiet: bool, out: Path | None) -> int:
    from models.summary import render

    job = client.follow(job_id, None if quiet else ProgressBar())
    if job["status"] != "succeeded":
        reason = f": {job['error']}" if job.get("error") else ""
        print(f"job {job_id} {job['status']}{reason}", file=sys.stderr)
        return EXIT_FAILED
    rec = client.recommendation(job_id)
    print(render(rec))
    if out is not None:
        _write_out(out, json.dumps(rec, indent=2))
        print(f"\nFull recommendation: {out}")
    print(f"Report: {client.server}/recommendations/{job_id}/report")
    return 0


def cmd_show(client: ServiceClient, args: argparse.Namespace) -> int:
    from models.summary import render

    job = client.job(args.job_id)
    if args.follow and job["status"] not in TERMINAL:
        job = client.follow(args.job_id, ProgressBar())
    rec = client.recommendation(args.job_id) if job["status"] == "succeeded" else None
    if args.json:
        print(json.dumps(rec if rec is not None else job, indent=2))
        return 0
    _print_job(job)
    if rec is not None:
        print()
        print(render(rec))
        print(f"\nReport: {client.server}/recommendations/{args.job_id}/report")
    return 0 if job["status"] != "failed" else EXIT_FAILED


def cmd_cancel(client: ServiceClient, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    # A job that has already finished is a 409 from the service (printed as an error).
    if job["status"] == "cancelled":
        print(f"job {job['id']} cancelled")
    else:
        print(f"job {job['id']}: cancel requested; it stops at its next step")
    return 0


def cmd_report(client: ServiceClient, args: argparse.Namespace) -> int:
    from app.pages import standalone_report
    from models.schema import Recommendation

    if (problem := _out_problem(args.out)) is not None:
        print(f"error: --out: {problem}", file=sys.stderr)
        return EXIT_USAGE

    rec = Recommendation.model_validate(client.recommendation(args.job_id))
    out = args.out if args.out is not None else Path(f"report-{args.job_id}.html")
    _write_out(out, standalone_report(rec, args.job_id, server=client.server))
    print(f"wrote {out}")
    if args.open:
        webbrowser.open(out.resolve().as_uri())
    return 0


COMMANDS: dict[str, Callable[[ServiceClient, argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "show": cmd_show,
    "cancel": cmd_cancel,
    "report": cmd_report,
}


def run_client_command(args: argparse.Namespace) -> int:
    """Run a client command; the service's errors are printed, not raised."""
    key = (args.key or "").strip()  # a key read from a file or a variable keeps its newline
    if not key:
        print("error: --key: no API key (pass --key or set TASKGROUPER_KEY)", file=sys.stderr)
        return EXIT_USAGE
    if not (key.isascii() and key.isprintable()):
        # Never echo it: a key is a secret, and this goes to a terminal or a CI log.
        print(
            "error: --key: the key holds characters no API key has (control or "
            "non-ASCII characters); check how it was copied",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        with ServiceClient(args.server, key) as client:
            return COMMANDS[args.command](client, args)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.status is not None and 400 <= exc.status < 500 else EXIT_FAILED
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except httpx.InvalidURL as exc:
        print(f"error: --server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OutputError as exc:  # writing --out (after the work; checked before it too)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
