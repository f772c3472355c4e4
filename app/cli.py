"""The ``taskgrouper`` command line.

Heavy modules (torch, transformers) are imported inside the commands that need them, so commands
that do not train stay fast and light.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
    an.add_argument("--lr", type=float, default=None)
    an.add_argument("--batch-size", type=int, default=None)
    an.add_argument("--max-length", type=int, default=None)
    an.add_argument("--probe-size", type=int, default=None)
    an.add_argument("--seed", type=int, default=None)
    an.add_argument("--verify", action="store_true", help="train and measure the MTL models too")
    an.add_argument("--verify-seeds", type=int, default=None)
    an.add_argument("--max-groups", type=int, default=None)
    an.add_argument("--tau-rep", type=float, default=None)
    an.add_argument("--tau-grad", type=float, default=None)
    an.add_argument("--rho", type=float, default=None)
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
    training: dict[str, Any] = {
        k: getattr(args, k)
        for k in ("epochs", "max_steps", "lr", "batch_size", "max_length", "probe_size", "seed")
        if getattr(args, k) is not None
    }
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


def example_path(name: str = "tickets") -> tuple[Path, list[list[str]]]:
    """The bundled example dataset and its planted grouping."""
    from importlib.resources import files

    folder = Path(str(files("models") / "examples"))
    planted = json.loads((folder / f"{name}.planted.json").read_text())["grouping"]
    return folder / f"{name}.csv", planted


def cmd_demo(args: argparse.Namespace) -> int:
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
    except (DataError, ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
