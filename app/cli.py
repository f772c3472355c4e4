"""The ``taskgrouper`` command line.

Heavy modules (torch, transformers) are imported inside the commands that need them, so commands
that do not train stay fast and light.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.client import COMMANDS as CLIENT_COMMANDS
from app.client import add_client_commands, run_client_command, training_options


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _candidate(value: str) -> list[list[str]]:
    """ "a,b;c" -> [["a", "b"], ["c"]]: groups separated by ';', tasks by ','."""
    groups = [_split_list(g) for g in value.split(";")]
    if not all(groups):
        raise argparse.ArgumentTypeError(f"candidate {value!r} has an empty group")
    return groups


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskgrouper",
        description="Recommend how to group classification tasks into multi-task models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    an = sub.add_parser(
        "analyze",
        help="run the whole analysis in this process and write the recommendation JSON",
        description="Fine-tune one model per task, compare them (CKA, gradient alignment), "
        "recommend a grouping and, with --verify, check it by training the MTL models.",
    )
    an.add_argument("data", nargs="+", metavar="DATA", help="CSV, JSONL or Parquet file(s)")
    an.add_argument("--text-column", required=True)
    an.add_argument(
        "--tasks",
        required=True,
        type=_split_list,
        help="comma-separated label columns; with several DATA files, FILE_STEM:column",
    )
    an.add_argument("--split-column", default=None, help="column of train/val values")
    an.add_argument("--model", default="minilm-l6", help="registered name or local directory")
    an.add_argument(
        "--candidate",
        action="append",
        type=_candidate,
        default=[],
        help='a candidate task set, e.g. "a,b;c" (repeatable)',
    )
    an.add_argument("--epochs", type=int, default=None)
    an.add_argument("--max-steps", type=int, default=None)
    an.add_argument(
        "--step-fraction",
        type=float,
        default=None,
        help="fast mode: every model trains for this share of its steps (0 < f <= 1)",
    )
    an.add_argument("--fast", action="store_true", help="fast mode: --step-fraction 0.25")
    an.add_argument("--lr", type=float, default=None)
    an.add_argument("--batch-size", type=int, default=None)
    an.add_argument("--max-length", type=int, default=None)
    an.add_argument("--probe-size", type=int, default=None)
    an.add_argument("--seed", type=int, default=None)
    an.add_argument(
        "--class-weights",
        choices=("none", "balanced"),
        default=None,
        help="balanced: weigh each class of a task's loss by n / (K n_k), for imbalanced tasks",
    )
    an.add_argument("--verify", action="store_true", help="train and measure the MTL models too")
    an.add_argument("--verify-seeds", type=int, default=None)
    an.add_argument("--max-groups", type=int, default=None)
    an.add_argument("--tau-rep", type=float, default=None)
    an.add_argument("--tau-grad", type=float, default=None)
    an.add_argument("--rho", type=float, default=None)
    an.add_argument(
        "--waive-unlearnt-cka",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="judge a pair without its CKA when one of its tasks' single-task models learnt "
        "little (default: the setting waive_unlearnt_cka)",
    )
    an.add_argument(
        "--rep-measure",
        choices=("cka", "partial_cka"),
        default=None,
        help="the representation measure a pair's verdict reads (default: the setting "
        "rep_measure); the thresholds not given default to that measure's",
    )
    an.add_argument(
        "--partial-cka-move",
        type=float,
        default=None,
        help="how far both tasks' models must have moved at a layer for the partial CKA to read "
        "it (default: the setting partial_cka_move)",
    )
    an.add_argument("--align-steps", type=int, default=None)
    an.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    an.add_argument("--out", required=True, type=Path, help="where to write the JSON")
    an.add_argument(
        "--artifact-dir",
        type=Path,
        default=None,
        help="keep each single-task model's weights and probe representations here (safetensors)",
    )
    an.add_argument("--quiet", action="store_true", help="no progress bar")

    de = sub.add_parser(
        "demo",
        help="analyze the bundled example (support tickets, 5 tasks) with minilm-l6",
        description="The main job on the bundled example: a real recommendation with the real "
        "MiniLM-L6 model, its planted grouping offered as a candidate.",
    )
    de.add_argument("--model", default="minilm-l6")
    de.add_argument("--epochs", type=int, default=2)
    de.add_argument("--verify", action="store_true")
    de.add_argument("--out", type=Path, default=Path("out/demo-recommendation.json"))
    mode = de.add_mutually_exclusive_group()
    mode.add_argument(
        "--service",
        action="store_true",
        help="run it through the service: start `taskgrouper serve` (SQLite, local worker) in "
        "a temporary data directory, submit the job over HTTP and follow its progress",
    )
    mode.add_argument("--local", action="store_true", help="run it in this process (the default)")
    de.add_argument(
        "--keep-serving",
        action="store_true",
        help="with --service: keep the service running after the job until Ctrl-C",
    )

    se = sub.add_parser(
        "serve",
        help="run the REST API (migrates the database first)",
        description="Migrate the database, then serve the API with uvicorn. With "
        "TASKGROUPER_BROKER_URL set, jobs go to the Celery workers (`taskgrouper worker`); "
        "without it (embedded mode) one local worker process runs them.",
    )
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--port", type=int, default=8000)
    se.add_argument("--log-level", default="info")

    wo = sub.add_parser(
        "worker",
        help="run a Celery worker (production mode; needs TASKGROUPER_BROKER_URL)",
        description="A Celery worker for the job tasks. By default a prefork pool of one "
        "process that is replaced after every task (--concurrency 1 --max-tasks-per-child 1): "
        "CUDA is only ever initialised in a child, time limits are enforced, and GPU memory is "
        "returned after each task. --pool solo runs tasks in the worker process itself.",
    )
    wo.add_argument("--queues", default="gpu,celery", help="queues to consume, comma-separated")
    wo.add_argument("--beat", action="store_true", help="also run beat (the periodic sweep)")
    wo.add_argument("--pool", choices=["prefork", "solo"], default="prefork")
    wo.add_argument("--hostname", "-n", default=None, help="worker name, e.g. gpu1@%%h")
    wo.add_argument("--loglevel", default="INFO")

    ke = sub.add_parser("keys", help="create, revoke and list API keys")
    keys = ke.add_subparsers(dest="keys_command", required=True)
    kc = keys.add_parser("create", help="create a key and print it (shown only once)")
    kc.add_argument("name")
    kc.add_argument("--owner", default=None, help="the key's owner (default: the name)")
    kr = keys.add_parser("revoke", help="revoke every live key with this name or prefix")
    kr.add_argument("name_or_prefix")
    keys.add_parser("list", help="list the keys (name, owner, prefix, created, revoked)")

    sub.add_parser("migrate", help="migrate the database to the latest schema")

    ca = sub.add_parser(
        "calibrate",
        help="refit p_match from the verified jobs in the database and store it",
        description="Fit the logistic model behind each group's p_match on every group that a "
        "finished job verified (jobs run with verify on), judge it leave-one-dataset-out, "
        "suggest thresholds, and store it: workers use the newest stored calibration.",
    )
    ca.add_argument("--dry-run", action="store_true", help="fit and report, store nothing")
    ca.add_argument(
        "--min-groups",
        type=int,
        default=20,
        help="refuse to fit on fewer verified groups than this (default 20)",
    )
    ca.add_argument("--strength", type=float, default=1.0, help="inverse L2 penalty C")
    ca.add_argument("--json", action="store_true", help="print the result as JSON")

    add_client_commands(sub)

    sy = sub.add_parser("synth", help="write a synthetic dataset with planted task structure")
    sy.add_argument("--out", required=True, type=Path)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--rows", type=int, default=800)
    sy.add_argument(
        "--features",
        type=_split_list,
        default=["2", "2", "1"],
        help="tasks per latent feature, e.g. 2,2,1",
    )
    sy.add_argument("--classes", type=int, default=3)
    sy.add_argument("--noise", type=float, default=0.1)
    sy.add_argument("--missing", type=float, default=0.0)
    return parser


def _progress_printer(quiet: bool) -> Any:
    if quiet:
        return None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=100, unit="%", file=sys.stderr, bar_format="{desc:<14}{bar}| {n:.0f}%")

        def update(stage: str, fraction: float) -> None:
            bar.set_description_str(stage)
            bar.n = round(100 * fraction, 1)
            bar.refresh()
            if stage == "done":
                bar.close()

        return update
    last: dict[str, Any] = {"stage": None, "pct": -10}

    def log(stage: str, fraction: float) -> None:
        pct = int(100 * fraction)
        if stage != last["stage"] or pct >= last["pct"] + 10:
            print(f"[{pct:3d}%] {stage}", file=sys.stderr, flush=True)
            last.update(stage=stage, pct=pct)

    return log


def _job_from_args(args: argparse.Namespace) -> Any:
    from app.settings import get_settings
    from models.data import load_dataset
    from models.grouping import Thresholds
    from models.options import DatasetSpec, JobSpec, TaskSpec, TrainingConfig
    from models.registry import resolve_model

    settings = get_settings()
    paths = [Path(p) for p in args.data]
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError("DATA: two files have the same name stem; rename one")
    by_dataset: dict[str, list[str]] = {s: [] for s in stems}
    tasks = []
    for entry in args.tasks:
        if len(paths) == 1:
            stem, column = stems[0], entry
        elif ":" in entry:
            stem, column = entry.split(":", 1)
            if stem not in by_dataset:
                raise ValueError(
                    f"--tasks: {entry!r} names no DATA file (known: {', '.join(stems)})"
                )
        else:
            raise ValueError(
                f"--tasks: with several DATA files write FILE_STEM:column, not {entry!r}"
            )
        by_dataset[stem].append(column)
        tasks.append(TaskSpec(name=entry, dataset=stem, column=column))
    datasets = []
    for path, stem in zip(paths, stems, strict=True):
        columns = by_dataset[stem]
        if not columns:
            raise ValueError(f"--tasks: no task uses DATA file {str(path)!r}")
        extra = [args.split_column] if args.split_column else []
        frame = load_dataset(
            path, text_column=args.text_column, label_columns=columns + extra, name=path.name
        )
        datasets.append(
            DatasetSpec(
                name=stem, frame=frame, text_column=args.text_column, split_column=args.split_column
            )
        )
    training = training_options(args)
    if args.rep_measure is not None or args.partial_cka_move is not None:
        settings = settings.model_copy(
            update={
                k: v
                for k, v in (
                    ("rep_measure", args.rep_measure),
                    ("partial_cka_move", args.partial_cka_move),
                )
                if v is not None
            }
        )
    th = settings.thresholds()
    thresholds = Thresholds(
        tau_rep=th.tau_rep if args.tau_rep is None else args.tau_rep,
        tau_grad=th.tau_grad if args.tau_grad is None else args.tau_grad,
        rho=th.rho if args.rho is None else args.rho,
    )
    overrides: dict[str, Any] = {
        "thresholds": thresholds,
        "max_groups": args.max_groups,
        "align_steps": args.align_steps,
    }
    if args.device:
        overrides["device"] = args.device
    if args.verify_seeds:
        overrides["verify_seeds"] = args.verify_seeds
    if args.waive_unlearnt_cka is not None:
        overrides["waive_unlearnt_cka"] = args.waive_unlearnt_cka
    return JobSpec(
        datasets=datasets,
        tasks=tasks,
        model_name=args.model,
        model_dir=resolve_model(args.model, settings.models, allow_path=True),
        training=TrainingConfig(**training),
        analysis=settings.analysis_config(**overrides),
        candidates=args.candidate,
        verify=args.verify,
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    spec = _job_from_args(args)
    from models.pipeline import run_job
    from models.summary import render

    rec = run_job(
        spec,
        progress=_progress_printer(args.quiet),
        artifact_dir=getattr(args, "artifact_dir", None),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    tmp.replace(args.out)
    print(render(rec))
    print(f"\nFull recommendation: {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.service:
        return cmd_demo_service(args)
    from models.data import example_path

    data, planted = example_path()
    argv = [
        "analyze",
        str(data),
        "--text-column",
        "text",
        "--tasks",
        ",".join(t for group in planted for t in group),
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--max-length",
        "64",
        "--candidate",
        ";".join(",".join(group) for group in planted),
        "--out",
        str(args.out),
    ]
    if args.verify:
        argv.append("--verify")
    print(
        "taskgrouper " + " ".join(f"'{a}'" if " " in a or ";" in a else a for a in argv),
        file=sys.stderr,
    )
    return cmd_analyze(build_parser().parse_args(argv))


def cmd_synth(args: argparse.Namespace) -> int:
    from models.synth import SynthSpec, write

    spec = SynthSpec(
        rows=args.rows,
        features=tuple(int(f) for f in args.features),
        classes=args.classes,
        noise=args.noise,
        seed=args.seed,
        missing=args.missing,
    )
    planted = write(spec, args.out)
    print(f"wrote {args.out} ({spec.rows} rows); planted grouping: {json.dumps(planted)}")
    return 0


def _migrated_settings() -> Any:
    from app.db import database_url, upgrade
    from app.settings import get_settings

    settings = get_settings()
    upgrade(database_url(settings))
    return settings


def cmd_migrate(_: argparse.Namespace) -> int:
    from app.db import database_url
    from app.settings import get_settings

    _migrated_settings()
    print(f"database at head: {_shown_url(database_url(get_settings()))}")
    return 0


def _shown_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from app.main import serve_app
    from app.queue import CeleryQueue, JobQueue, LocalQueue

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = _migrated_settings()
    workers = settings.api_workers
    queue: JobQueue | None
    if settings.broker_url:
        # With several API processes each one makes its own (app.main.served_app).
        queue = CeleryQueue(settings.broker_url) if workers == 1 else None
        print(
            f"jobs go to the Celery workers at {_shown_url(settings.broker_url)}", file=sys.stderr
        )
    elif workers > 1:
        print(
            f"error: TASKGROUPER_API_WORKERS={workers} needs TASKGROUPER_BROKER_URL; embedded "
            "mode serves from one process (its local worker runs one job at a time)",
            file=sys.stderr,
        )
        return 2
    else:
        queue = LocalQueue(settings)
        print("embedded mode: one local worker process runs the jobs", file=sys.stderr)
    if workers > 1:
        print(f"serving from {workers} API processes", file=sys.stderr)
    serve_app(
        settings,
        queue=queue,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=workers,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.settings import get_settings

    if not get_settings().broker_url:
        print(
            "error: TASKGROUPER_BROKER_URL is not set; `taskgrouper serve` runs jobs itself in "
            "embedded mode",
            file=sys.stderr,
        )
        return 2
    from worker.celery_app import celery_app

    argv = ["worker", f"--loglevel={args.loglevel}", "-Q", args.queues, f"--pool={args.pool}"]
    if args.pool == "prefork":
        argv += ["--concurrency=1", "--max-tasks-per-child=1"]
    if args.hostname:
        argv += ["-n", args.hostname]
    if args.beat:
        get_settings().data_dir.mkdir(parents=True, exist_ok=True)  # beat's schedule file
        argv.append("--beat")
    celery_app.worker_main(argv)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from app import repository
    from app.db import database_url, make_engine, make_sessionmaker
    from app.settings import get_settings

    engine = make_engine(database_url(get_settings()))
    try:
        with make_sessionmaker(engine)() as session:
            if args.keys_command == "create":
                row, key = repository.create_api_key(
                    session=session, name=args.name, owner=args.owner
                )
                session.commit()
                print(key)
                print(
                    f"created key {row.prefix}... for owner {row.owner!r}; it is shown only "
                    "once: keep it now",
                    file=sys.stderr,
                )
            elif args.keys_command == "revoke":
                n = repository.revoke_api_key(session=session, name_or_prefix=args.name_or_prefix)
                session.commit()
                print(f"revoked {n} key(s)")
                return 0 if n else 1
            else:
                rows = repository.list_api_keys(session=session)
                print(f"{'name':<20} {'owner':<20} {'prefix':<13} {'created':<20} revoked")
                for row in rows:
                    revoked = row.revoked_at.strftime("%Y-%m-%d %H:%M") if row.revoked_at else "-"
                    created = row.created_at.strftime("%Y-%m-%d %H:%M")
                    print(
                        f"{row.name:<20} {row.owner:<20} {row.prefix:<13} {created:<20} {revoked}"
                    )
    finally:
        engine.dispose()
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from app import repository
    from app.db import database_url, make_engine, make_sessionmaker
    from app.settings import get_settings
    from models.calibration import (
        CalibrationError,
        fit_calibration,
        fit_thresholds,
        leave_one_dataset_out,
        observations_from_recommendation,
    )

    settings = get_settings()
    measure = settings.rep_measure
    engine = make_engine(database_url(settings))
    unread = 0
    try:
        with make_sessionmaker(engine)() as session:
            verified = repository.verified_recommendations(session=session)
            obs = []
            for job, rec in verified:
                # Jobs on the same uploaded datasets share a fold: held out together.
                fold = "+".join(sorted(d["id"] for d in (job.request or {}).get("datasets", [])))
                try:
                    obs += observations_from_recommendation(
                        rec.body, fold or job.id, measure=measure
                    )
                except CalibrationError:  # stored before its pairs recorded the measure
                    unread += 1
            if len(obs) < args.min_groups:
                unread_note = (
                    f" ({unread} of them stored before their pairs recorded the {measure} evidence)"
                    if unread
                    else ""
                )
                raise CalibrationError(
                    f"only {len(obs)} verified group(s) in {len(verified)} job(s){unread_note}, "
                    f"fewer than --min-groups {args.min_groups}: run more jobs with verify on"
                )
            cal = fit_calibration(
                obs, strength=args.strength, source=f"{len(verified) - unread} verified jobs"
            )
            # Fitted on the view of the evidence the verdicts in force read.
            cal = dataclasses.replace(cal, rep_measure=measure)
            metrics: dict[str, Any] = {}
            try:
                held = leave_one_dataset_out(obs, strength=args.strength)
                metrics["held_out"] = held.scores()
                # The same predictions on the groups whose every single-task model learnt its
                # task: where the evidence compares models that solve their tasks (recommendations
                # stored before ``stl.learnt`` existed do not say).
                if any(o.learnt is not None for o in obs):
                    metrics["held_out_learnt_groups"] = held.subset_scores(
                        [o.learnt is True for o in obs]
                    )
            except CalibrationError as exc:
                metrics["held_out"] = f"not measured: {exc}"
            try:
                fit = fit_thresholds(obs)
                metrics["suggested_thresholds"] = dataclasses.asdict(fit.thresholds)
                metrics["suggested_thresholds_balanced_accuracy"] = fit.balanced_accuracy
            except CalibrationError as exc:
                metrics["suggested_thresholds"] = f"not fitted: {exc}"
            cal = dataclasses.replace(cal, metrics=metrics)
            stored = None
            if not args.dry_run:
                row = repository.save_calibration(
                    session=session, body=cal.to_dict(), n_groups=len(obs), n_jobs=len(verified)
                )
                session.commit()
                stored = row.id
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"stored": stored, "calibration": cal.to_dict()}, indent=2))
        return 0
    matching = sum(o.matches for o in obs)
    print(
        f"fitted p_match on {len(obs)} verified groups ({matching} matched) of "
        f"{len(verified) - unread} jobs, on the {measure} evidence (setting rep_measure)"
    )
    if unread:
        print(f"left out {unread} job(s) stored before their pairs recorded the {measure} evidence")
    print(f"held out (leave one dataset out): {metrics['held_out']}")
    if "held_out_learnt_groups" in metrics:
        learnt = metrics["held_out_learnt_groups"]
        print(
            f"held out, groups whose every task's single-task model learnt "
            f"({learnt['n_groups']} of {len(obs)}): {learnt}"
        )
    print(f"suggested thresholds: {metrics['suggested_thresholds']}")
    print(f"stored as calibration {stored}" if stored else "dry run: nothing stored")
    return 0


def wait_until_ready(server: Any, client: Any, timeout_s: float) -> None:
    """Poll ``/readyz`` of a ``taskgrouper serve`` subprocess (a ``subprocess.Popen``) through
    ``client`` (an ``httpx.Client``) until it answers 200.

    Raises RuntimeError when the server exits first or ``timeout_s`` passes.
    """
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise RuntimeError("the service exited")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not become ready")
        time.sleep(0.3)


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_RUN_CLI = "import sys; from app.cli import main; sys.exit(main())"


def create_key_via_cli(name: str, *, env: dict[str, str], cwd: Path) -> str:
    """``taskgrouper keys create NAME`` in a subprocess with ``env``; returns the printed key."""
    import subprocess

    made = subprocess.run(
        [sys.executable, "-c", _RUN_CLI, "keys", "create", name],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


def cmd_demo_service(args: argparse.Namespace) -> int:
    """The demo through the service: serve, key, upload, submit, follow, show, stop."""
    import os
    import subprocess
    import tempfile

    import httpx

    from app.client import ProgressBar, ServiceClient, ServiceError
    from models.data import example_path
    from models.summary import render

    data, planted = example_path()
    with tempfile.TemporaryDirectory(prefix="taskgrouper-demo-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGROUPER_")}
        env["TASKGROUPER_DATA_DIR"] = tmp
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        print(f"starting the service on {base} (data in {tmp})", file=sys.stderr)
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RUN_CLI,
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=tmp,
        )
        try:
            with httpx.Client(base_url=base, timeout=30) as probe:
                try:
                    wait_until_ready(server, probe, 120)
                except RuntimeError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
            key = create_key_via_cli("demo", env=env, cwd=Path(tmp))
            with ServiceClient(base, key) as client:
                dataset = client.upload(data)
                body = {
                    "dataset_id": dataset["id"],
                    "text_column": "text",
                    "tasks": [t for group in planted for t in group],
                    "model": args.model,
                    "training": {"epochs": args.epochs, "max_length": 64},
                    "candidate_task_sets": [planted],
                    "verify": bool(args.verify),
                }
                try:
                    job_id = client.submit(body)["id"]
                except ServiceError as exc:
                    print(f"error: {exc.message}", file=sys.stderr)
                    return 1
                print(
                    f"job {job_id} submitted: {len(body['tasks'])} tasks, model {args.model}",
                    file=sys.stderr,
                )
                job = client.follow(job_id, ProgressBar())
                if job["status"] != "succeeded":
                    print(f"error: job {job['status']}: {job['error']}", file=sys.stderr)
                    return 1
                rec = client.recommendation(job_id)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rec, indent=2))
                print(render(rec))
                print(f"\nFull recommendation: {args.out}")
                if args.keep_serving:
                    print(
                        f"Report: {base}/recommendations/{job_id}/report (sign in with the key "
                        f"{key}); the API's documentation is at {base}/docs"
                    )
                else:
                    print("(--keep-serving keeps the service up to open the report page)")
                if args.keep_serving:
                    print("serving until Ctrl-C", file=sys.stderr)
                    with contextlib.suppress(KeyboardInterrupt):
                        server.wait()
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGINT)  # uvicorn: graceful; stops the local worker
                try:
                    server.wait(60)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            print("service stopped", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from models.data import DataError
    from models.registry import ModelError

    try:
        if args.command == "analyze":
            return cmd_analyze(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "synth":
            return cmd_synth(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "worker":
            return cmd_worker(args)
        if args.command == "keys":
            return cmd_keys(args)
        if args.command == "migrate":
            return cmd_migrate(args)
        if args.command == "calibrate":
            return cmd_calibrate(args)
        if args.command in CLIENT_COMMANDS:
            return run_client_command(args)
    except (DataError, ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
