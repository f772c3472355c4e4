"""Is the planted grouping recovered on data the defaults never saw? (issue 4, "planted groupings
recovered at the low and middle noise levels").

The quality suite (``bench_quality.py``) holds few planted cases per noise level, because each
pays for brute-force ground truth. Recovery needs none: the planted grouping is known before the
data exist. This runs the service's recommendation alone (one seed's single-task fine-tunes and
the analysis, on the shipped thresholds and ``p_match``) on fresh generator seeds, none of which
the defaults were fitted on, and counts how often the recommended grouping is the planted one,
with a Wilson 95% interval per noise level and task count.

The shapes are the suite's planted cases: 3 tasks (a planted pair beside an unrelated task) and
4 tasks (a planted pair beside two unrelated tasks), 400 rows, 4 classes, MiniLM-L6 at the
suite's synthetic settings. The plan (levels, shapes, seeds, order) is written down in
``bench/results/planted_sweep_prereg.json`` before any of it ran; each run writes
``bench/results/planted/<name>.json`` as it ends, so the sweep resumes where it stopped.

    .venv/bin/python bench/bench_planted.py run [--threads N] [--only NAME,...] [--every K/M]
    .venv/bin/python bench/bench_planted.py report [--out bench/out/planted.json]

``--every K/M`` runs the seeds whose place in the plan is K modulo M (from 0), every cell of
each, so M queues share the plan and any prefix of each queue stays balanced. ``run`` refuses
to start when ``models/calibration.json`` is not the one the plan names: a sweep finished in a
later session judges the same rule or none.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import NOISES, Case, case_spec, save, synth_loader
from machine import cpu_model
from quality_report import same_partition

from models import grouping as grp
from models.options import AnalysisConfig, TrainingConfig

OUT = Path("bench/results/planted")  # kept in the repository, like the quality cases
PREREG = Path("bench/results/planted_sweep_prereg.json")
SHAPES = {3: (2, 1), 4: (2, 1, 1)}  # features per latent: a planted pair, then unrelated tasks
# The suite's synthetic MiniLM settings (``bench_quality.default_suite``'s ``minilm_synth``).
TRAINING = TrainingConfig(epochs=2, lr=1e-4, batch_size=32, max_length=40, probe_size=512)


CALIBRATION = Path("models/calibration.json")


def calibration_sha256(path: Path = CALIBRATION) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def queue_of(runs: list[dict[str, Any]], every: str) -> list[dict[str, Any]]:
    """The runs of queue ``K/M``: whole seeds, the K-th of every M in the plan's seed order."""
    try:
        k, m = (int(x) for x in every.split("/"))
    except ValueError:
        raise ValueError(f"--every: {every!r} is not K/M") from None
    if not 0 <= k < m:
        raise ValueError(f"--every: {every!r} needs 0 <= K < M")
    seeds = list(dict.fromkeys(r["seed"] for r in runs))
    mine = set(seeds[k::m])
    return [r for r in runs if r["seed"] in mine]


def plan(prereg: Path = PREREG) -> list[dict[str, Any]]:
    """The runs of the written plan, in its order: seed-major, so any prefix is balanced."""
    spec = json.loads(prereg.read_text())
    return [
        {
            "name": f"sweep-{level}-t{t}-{spec['rows']}-s{seed}",
            "level": level,
            "tasks": t,
            "rows": spec["rows"],
            "seed": seed,
        }
        for seed in spec["seeds"]
        for level in spec["levels"]
        for t in spec["task_counts"]
    ]


def case_of(run: dict[str, Any]) -> Case:
    return Case(
        name=run["name"],
        dataset=run["name"],
        load=synth_loader(
            SHAPES[run["tasks"]],
            NOISES[run["level"]],
            rows=run["rows"],
            classes=4,
            seed=run["seed"],
        ),
        model="minilm-l6",
        training=TRAINING,
        seeds=1,
        notes=f"planted sweep: {run['tasks']} tasks at {run['level']} noise, seed {run['seed']}",
    )


def recommend(run: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """The service's recommendation on one fresh planted dataset, with what it rested on."""
    from models.pipeline import Progress, analyze, prepare, run_finetunes

    case = case_of(run)
    frame, tasks, planted = case.load()
    spec = case_spec(case, frame, tasks, analysis=AnalysisConfig(device=device))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    job = prepare(spec)
    prepare_s = time.perf_counter() - t0
    tracker = Progress(None, {"finetune": 1.0})
    tracker.start("finetune")
    run_finetunes(job, tracker, None, None, seeds=[TRAINING.seed])
    finetune_s = time.perf_counter() - t0 - prepare_s
    rec = analyze(job)
    assert planted is not None  # the generator always plants
    return {
        **run,
        "planted": planted,
        "recommended": rec["grouping"],
        "recovered": same_partition(rec["grouping"], planted),
        "verdicts": rec.get("groups"),
        # Whole, as the service reports them: any grouping rule can be recomputed from them.
        "pairs": rec["pairs"],
        "stl_macro_f1": {n: job.stl[n][0].macro_f1 for n in tasks},
        "thresholds": rec["settings"]["thresholds"],
        "calibration_sha256": calibration_sha256(),
        "seconds": {
            "prepare": prepare_s,
            "finetune": finetune_s,
            "total": time.perf_counter() - t0,
        },
        "machine": f"{os.cpu_count()} cores, {cpu_model()}",
    }


@dataclasses.dataclass(frozen=True)
class BeforeRawFallback(grp.PairEvidence):
    """The engine's tie-break affinity before ``raw_fallback`` was adopted: the sweeps' "shipped"
    rule. A pair whose partial CKA reads no layer counts its representation term as 1.0 (the
    value its verdict reads) instead of its raw min CKA."""

    @property
    def affinity(self) -> float:
        return 0.5 * self.cka_judged + 0.5 * self.grad_cosine


# The grouping rules a plan may compare (its "rules"), by the pair evidence class they read: a
# rule that changes how evidence becomes a grouping is a subclass here, judged on the same runs.
# "shipped" is the engine the sweeps' plans were written against; "raw_fallback", judged by
# planted_sweep_2_prereg.json and adopted, is the engine's own evidence class since.
RULES: dict[str, type[grp.PairEvidence]] = {
    "shipped": BeforeRawFallback,
    "raw_fallback": grp.PairEvidence,
    "tau_rep_0.05": grp.PairEvidence,
}

# Rules that change a threshold: the values that replace the run's stored ones (the engine's
# defaults when it ran). "tau_rep_0.05" is judged by planted_sweep_3_prereg.json.
RULE_THRESHOLDS: dict[str, dict[str, float]] = {
    "tau_rep_0.05": {"tau_rep": 0.05},
}


def regroup(result: dict[str, Any], rule: str) -> list[list[str]] | None:
    """The grouping ``rule`` recommends from a run's stored evidence; None for a run stored
    before whole pair reports were kept."""
    if not all("rep_measure" in p for p in result["pairs"]):
        return None
    tasks = [t for g in result["planted"] for t in g]
    table = grp.PairTable.from_pairs(tasks, map(RULES[rule].from_report, result["pairs"]))
    th = grp.Thresholds(**{**result["thresholds"], **RULE_THRESHOLDS.get(rule, {})})
    return grp.recommend_grouping(tasks, table, th).grouping


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95% at z = 1.96); (0, 1) when n is 0."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At k = 0 or k = n one end is exactly 0 or 1; floating point would miss it by an ulp.
    return (0.0 if k == 0 else centre - half, 1.0 if k == n else centre + half)


def summarise(
    runs: list[dict[str, Any]], results: dict[str, dict[str, Any]], rule: str = "shipped"
) -> dict[str, Any]:
    """Recovery per (noise level, task count) under ``rule`` over the plan's runs that have a
    result (``shipped``: the service's own recommendation, as stored; another rule: recomputed
    from the stored evidence, :func:`regroup`), with the planned runs not yet measured, and
    those stored without whole pair reports (``unjudged``: another rule cannot read them)."""
    cells: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = f"{run['level']}-t{run['tasks']}"
        cell = cells.setdefault(
            key, {"recovered": 0, "runs": 0, "missing": [], "misses": [], "unjudged": 0}
        )
        result = results.get(run["name"])
        if result is None:
            cell["missing"].append(run["name"])
            continue
        grouping = result["recommended"] if rule == "shipped" else regroup(result, rule)
        if grouping is None:
            cell["unjudged"] += 1
            continue
        recovered = same_partition(grouping, result["planted"])
        cell["runs"] += 1
        cell["recovered"] += recovered
        if not recovered:
            cell["misses"].append({"name": run["name"], "recommended": grouping})
    for cell in cells.values():
        cell["interval_95"] = list(wilson(cell["recovered"], cell["runs"]))
    return cells


def compare_rules(
    runs: list[dict[str, Any]], results: dict[str, dict[str, Any]], base: str, other: str
) -> dict[str, Any]:
    """Run by run, where ``other`` recommends differently from ``base``: which of the two
    recovers the planted grouping, with the counts a plan's decision reads (``wins`` and
    ``losses`` of ``other``, in all and at each noise level). Runs either rule cannot read
    are left out."""
    differ = []
    for run in runs:
        result = results.get(run["name"])
        if result is None:
            continue
        a = result["recommended"] if base == "shipped" else regroup(result, base)
        b = result["recommended"] if other == "shipped" else regroup(result, other)
        if a is None or b is None or same_partition(a, b):
            continue
        differ.append(
            {
                "name": run["name"],
                "level": run["level"],
                base: a,
                other: b,
                "base_recovers": same_partition(a, result["planted"]),
                "other_recovers": same_partition(b, result["planted"]),
            }
        )
    levels = sorted({d["level"] for d in differ})
    return {
        "base": base,
        "other": other,
        "differ": differ,
        "wins": sum(d["other_recovers"] and not d["base_recovers"] for d in differ),
        "losses": sum(d["base_recovers"] and not d["other_recovers"] for d in differ),
        "losses_by_level": {
            lv: sum(
                d["base_recovers"] and not d["other_recovers"] for d in differ if d["level"] == lv
            )
            for lv in levels
        },
    }


def not_reproduced(results: dict[str, dict[str, Any]], rule: str = "shipped") -> list[str]:
    """Runs whose stored recommendation ``rule`` (the engine the plan was written against, its
    first rule) does not give again from their stored evidence (a check that :func:`regroup`
    reads the evidence as the service did)."""
    return [
        name
        for name, result in results.items()
        if (again := regroup(result, rule)) is not None
        and not same_partition(again, result["recommended"])
    ]


def load_results(folder: Path = OUT) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def cmd_run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    wanted = set(filter(None, args.only.split(",")))
    pinned = json.loads(args.plan.read_text())["calibration_sha256"]
    if calibration_sha256() != pinned:
        print(
            f"error: {CALIBRATION} is not the calibration the plan judges ({args.plan}); the "
            "sweep would mix two rules",
            file=sys.stderr,
        )
        return 2
    try:
        queue = queue_of(plan(args.plan), args.every)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for run in queue:
        path = OUT / f"{run['name']}.json"
        if (wanted and run["name"] not in wanted) or path.is_file():
            continue
        start = time.perf_counter()
        result = recommend(run, args.device)
        save(path, result)
        print(
            f"{run['name']}: {'recovered' if result['recovered'] else 'MISSED'} "
            f"{result['recommended']} ({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    runs = plan(args.plan)
    rules = json.loads(args.plan.read_text()).get("rules", ["shipped"])
    results = load_results()
    by_rule = {rule: summarise(runs, results, rule) for rule in rules}
    mismatched = not_reproduced(
        {r["name"]: results[r["name"]] for r in runs if r["name"] in results}, rules[0]
    )
    comparisons = [compare_rules(runs, results, rules[0], other) for other in rules[1:]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "prereg": str(args.plan),
                "rules": by_rule,
                "comparisons": comparisons,
                "not_reproduced": mismatched,
            },
            indent=1,
        )
    )
    print(f"plan {args.plan}")
    if mismatched:
        print(f"stored recommendations not reproduced from their evidence: {mismatched}")
    print("| rule | noise, tasks | recovered | runs | 95% interval | not run yet | misses |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rule, cells in by_rule.items():
        for key, cell in cells.items():
            low, high = cell["interval_95"]
            misses = ", ".join(m["name"].rsplit("-", 1)[-1] for m in cell["misses"]) or "–"
            print(
                f"| {rule} | {key} | {cell['recovered']} | {cell['runs']} | {low:.2f}-{high:.2f} "
                f"| {len(cell['missing'])} | {misses} |"
            )
    for c in comparisons:
        print(
            f"\n{c['other']} against {c['base']}: recommends differently on {len(c['differ'])} "
            f"runs; recovers the planted grouping where {c['base']} does not on {c['wins']}, "
            f"fails where it recovers on {c['losses']} (by noise level: {c['losses_by_level']})"
        )
        for d in c["differ"]:
            print(
                f"  {d['name']}: {c['base']} {d[c['base']]} "
                f"({'recovers' if d['base_recovers'] else 'misses'}), {c['other']} "
                f"{d[c['other']]} ({'recovers' if d['other_recovers'] else 'misses'})"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="recommend on the plan's fresh planted datasets (resumable)")
    run.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    run.add_argument("--only", default="", help="comma-separated run names (exact)")
    run.add_argument("--every", default="0/1", help="K/M: the K-th of every M seeds (queues)")
    run.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    run.add_argument("--plan", type=Path, default=PREREG, help="the written plan to run")
    rep = sub.add_parser("report", help="recovery per noise level and task count")
    rep.add_argument("--out", type=Path, default=Path("bench/out/planted.json"))
    rep.add_argument("--plan", type=Path, default=PREREG, help="the written plan to read")
    args = parser.parse_args(argv)
    return cmd_run(args) if args.command == "run" else cmd_report(args)


if __name__ == "__main__":
    raise SystemExit(main())
