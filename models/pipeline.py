"""The one entry point: run METHOD.md stages 1-5 for a job and return the recommendation.

``run_job`` reports progress through a callback ``(stage, fraction)`` where ``fraction`` is the
share of the whole job done (0..1, never decreasing) and checks ``should_cancel`` between steps; a
cancelled job raises :class:`models.training.JobCancelled`. The stages are separate functions so the
service can run them as separate worker tasks (``prepare``, ``run_finetune``, ``analyze``).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import grouping as grp
from models.calibration import group_features
from models.data import TaskData, build_probe_set, build_task
from models.device import resolve_device
from models.finetune import SingleTaskResult, finetune_task
from models.gradients import AlignmentResult, gradient_alignment
from models.options import LEARN_MARGIN, TRAINING_KEYS, JobSpec
from models.registry import load_encoder, load_tokenizer
from models.schema import Recommendation
from models.similarity import cross_cka, layerwise_pairwise_cka, partial_cka
from models.training import (
    CancelCheck,
    TokenizedTask,
    chance_baseline,
    check_cancel,
    layer_representations,
    model_config,
    pad_id_of,
    steps_per_task,
    tokenize,
)
from models.verify import MTLResult, compare_group, train_mtl

ProgressCallback = Callable[[str, float], None]
STAGES = ("prepare", "finetune", "similarity", "alignment", "grouping", "verification")


class Progress:
    """Turns per-stage step counts into one overall fraction that never goes backwards."""

    def __init__(self, callback: ProgressCallback | None, weights: dict[str, float]) -> None:
        self.callback = callback
        self.weights = dict(weights)
        self.done = 0.0  # overall fraction at the start of the current stage
        self.stage = ""
        self.span = 0.0

    def start(self, stage: str) -> None:
        self.done += self.span
        self.stage = stage
        remaining = [s for s in STAGES[STAGES.index(stage) :] if s in self.weights]
        total = sum(self.weights[s] for s in remaining) or 1.0
        self.span = (1.0 - self.done) * self.weights.get(stage, 0.0) / total
        self.report(0, 1)

    def replan(self, stage: str, weight: float) -> None:
        self.weights[stage] = weight

    def report(self, step: int, total: int) -> None:
        if self.callback is not None:
            frac = self.done + self.span * (step / total if total else 1.0)
            self.callback(self.stage, min(1.0, frac))


@dataclass
class PreparedJob:
    """Stage 0: the tasks' data, the probe set, the tokenized inputs and the base model."""

    spec: JobSpec
    data: dict[str, TaskData]
    probe_texts: list[str]
    tokenized: dict[str, TokenizedTask]
    probe_ids: list[list[int]]
    encoder: nn.Module
    pad_id: int
    device: torch.device
    stl: dict[str, list[SingleTaskResult]] = field(default_factory=dict)  # per task, per seed


def prepare(spec: JobSpec) -> PreparedJob:
    datasets = {d.name: d for d in spec.datasets}
    data: dict[str, TaskData] = {}
    for task in spec.tasks:
        ds = datasets[task.dataset]
        data[task.name] = build_task(
            ds.frame,
            name=task.name,
            text_column=ds.text_column,
            label_column=task.column,
            dataset=ds.name,
            split_column=ds.split_column,
            val_fraction=spec.analysis.val_fraction,
            seed=spec.training.seed,
            min_class_count=spec.analysis.min_class_count,
        )
    probe_texts = build_probe_set(
        list(data.values()), size=spec.training.probe_size, seed=spec.training.seed
    )
    tokenizer = load_tokenizer(spec.model_dir)
    max_len = spec.training.max_length
    tokenized = {
        name: TokenizedTask(
            train_ids=tokenize(tokenizer, d.train_texts, max_len),
            train_labels=np.asarray(d.train_labels, dtype=np.int64),
            val_ids=tokenize(tokenizer, d.val_texts, max_len),
            val_labels=np.asarray(d.val_labels, dtype=np.int64),
            n_classes=len(d.classes),
            dataset=d.dataset,
            train_rows=np.asarray(d.train_rows, dtype=np.int64) if d.train_rows else None,
        )
        for name, d in data.items()
    }
    device = resolve_device(spec.analysis.device)
    encoder = load_encoder(spec.model_dir)
    return PreparedJob(
        spec=spec,
        data=data,
        probe_texts=probe_texts,
        tokenized=tokenized,
        probe_ids=tokenize(tokenizer, probe_texts, max_len),
        encoder=encoder,
        pad_id=pad_id_of(tokenizer),
        device=device,
    )


def run_job(
    spec: JobSpec,
    *,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    artifact_dir: Path | None = None,
) -> dict[str, Any]:
    """Run every stage; return the recommendation as JSON-ready data (``schema.Recommendation``)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # Preparing is quick; the real plan (in training steps) is known once the data is read.
    tracker = Progress(progress, {"prepare": 0.02, "finetune": 0.98})
    tracker.start("prepare")
    job = prepare(spec)
    check_cancel(should_cancel)
    timings["prepare"] = time.perf_counter() - t0

    cfg = spec.training
    stl_steps = sum(steps_per_task(len(t.train_ids), cfg) for t in job.tokenized.values())
    weights = {
        "finetune": float(stl_steps),
        "similarity": 0.02 * stl_steps,
        "alignment": 0.15 * stl_steps + 1,
        "grouping": 0.01 * stl_steps,
    }
    if spec.verify:  # a first guess (the all-tasks group); replanned once the groups are known
        weights["verification"] = float(stl_steps)
    tracker.weights.update(weights)

    t = time.perf_counter()
    tracker.start("finetune")
    run_finetunes(job, tracker, should_cancel, artifact_dir)
    timings["finetune"] = time.perf_counter() - t

    return analyze(job, tracker=tracker, should_cancel=should_cancel, timings=timings, started=t0)


def analyze(
    job: PreparedJob,
    *,
    progress: ProgressCallback | None = None,
    tracker: Progress | None = None,
    start_fraction: float = 0.0,
    should_cancel: CancelCheck | None = None,
    timings: dict[str, float] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Stages 2-5 for a job whose single-task results (``job.stl``) are in place.

    The service runs the fine-tunes as separate worker tasks, then calls this with the results it
    stored (``SingleTaskResult.from_record``); ``start_fraction`` is the share of the job already
    done, so the progress it reports continues from there.
    """
    spec = job.spec
    cfg = spec.training
    timings = {} if timings is None else timings
    t0 = time.perf_counter() if started is None else started
    if tracker is None:
        stl_steps = sum(steps_per_task(len(t.train_ids), cfg) for t in job.tokenized.values())
        weights = {
            "similarity": 0.02 * stl_steps,
            "alignment": 0.15 * stl_steps + 1,
            "grouping": 0.01 * stl_steps,
        }
        if spec.verify:
            weights["verification"] = float(stl_steps)
        tracker = Progress(progress, weights)
        tracker.span = start_fraction
    missing = [name for name in job.tokenized if not job.stl.get(name)]
    if missing:
        raise ValueError(f"no single-task result for task(s) {', '.join(missing)}")

    t = time.perf_counter()
    tracker.start("similarity")
    similarity = analyze_similarity(job)
    timings["similarity"] = time.perf_counter() - t

    t = time.perf_counter()
    tracker.start("alignment")
    alignment = gradient_alignment(
        job.encoder,
        job.tokenized,
        cfg,
        spec.analysis,
        job.device,
        pad_id=job.pad_id,
        on_step=tracker.report,
        should_cancel=should_cancel,
    )
    timings["alignment"] = time.perf_counter() - t

    t = time.perf_counter()
    tracker.start("grouping")
    tasks = task_reports(job, similarity)
    pairs = pair_reports(job, similarity, alignment, {t["name"]: t["stl"]["learnt"] for t in tasks})
    decision = decide(job, pairs)
    timings["grouping"] = time.perf_counter() - t

    verification = None
    if spec.verify:
        t = time.perf_counter()
        groups = [g["tasks"] for g in decision["groups"] if len(g["tasks"]) > 1]
        tracker.replan(
            "verification",
            float(
                sum(steps_per_task(len(job.tokenized[n].train_ids), cfg) for g in groups for n in g)
                * spec.analysis.verify_seeds
            ),
        )
        tracker.start("verification")
        verification = run_verification(job, decision["groups"], tracker, should_cancel)
        timings["verification"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    decision["verdict"]["notes"] = [*decision["verdict"]["notes"], *learning_notes(job, tasks)]
    rec = {
        "settings": settings_report(job, alignment),
        "tasks": tasks,
        "pairs": pairs,
        **decision,
        "verification": verification,
        "timings": timings,
    }
    if tracker.callback is not None:
        tracker.callback("done", 1.0)
    return Recommendation.model_validate(rec).model_dump(mode="json")


def run_finetunes(
    job: PreparedJob,
    tracker: Progress,
    should_cancel: CancelCheck | None,
    artifact_dir: Path | None,
    *,
    seeds: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> None:
    cfg = job.spec.training
    seeds = [cfg.seed] if seeds is None else seeds
    names = list(job.tokenized) if names is None else names
    plan = [(s, n) for s in seeds for n in names]
    budgets = [steps_per_task(len(job.tokenized[n].train_ids), cfg) for _, n in plan]
    total, done = sum(budgets), 0
    for (seed, name), budget in zip(plan, budgets, strict=True):

        def on_step(step: int, _total: int, base: int = done) -> None:
            tracker.report(base + step, total)

        result = finetune_task(
            pretrained=job.encoder,
            task_name=name,
            data=job.tokenized[name],
            probe_ids=job.probe_ids,
            cfg=cfg,
            device=job.device,
            pad_id=job.pad_id,
            seed=seed,
            artifact_dir=artifact_dir,
            on_step=on_step,
            should_cancel=should_cancel,
        )
        if seed != cfg.seed:  # extra verification seeds need only the metrics
            result.reps = torch.empty(0)
        job.stl.setdefault(name, []).append(result)
        done += budget


@dataclass
class Similarity:
    cka: np.ndarray  # (L+1, T, T)
    to_pretrained: np.ndarray  # (T, L+1)


def analyze_similarity(job: PreparedJob) -> Similarity:
    names = list(job.tokenized)
    reps = torch.stack([job.stl[n][0].reps for n in names])  # (T, L+1, n, d)
    batch = job.spec.analysis.cka_batch_size
    cka = layerwise_pairwise_cka(reps, batch_size=batch)
    # The pretrained encoder stays where it was loaded (the CPU): the fine-tunes, the alignment and
    # the verification each take a copy to the device, and so does this read.
    encoder = job.encoder if job.device.type == "cpu" else copy.deepcopy(job.encoder).to(job.device)
    base = layer_representations(encoder, job.probe_ids, job.device, pad_id=job.pad_id)
    del encoder
    return Similarity(cka=cka.numpy(), to_pretrained=cross_cka(reps, base).numpy())


def pair_reports(
    job: PreparedJob,
    sim: Similarity,
    align: AlignmentResult,
    learnt: Mapping[str, bool] | None = None,
) -> list[dict[str, Any]]:
    """Each pair's evidence and whether it passes. With ``analysis.waive_unlearnt_cka``, a pair
    with a task that ``learnt`` marks false is judged without its CKA (``cka_waived``)."""
    names = list(job.tokenized)
    th = job.spec.analysis.thresholds
    waive = job.spec.analysis.waive_unlearnt_cka
    if waive and learnt is None:
        raise ValueError("waive_unlearnt_cka needs to know which tasks' models learnt")
    unlearnt = {n for n, ok in (learnt or {}).items() if not ok} if waive else set()
    measure = job.spec.analysis.rep_measure
    out = []
    for i, j in itertools.combinations(range(len(names)), 2):
        curve = sim.cka[:, i, j]
        low = int(np.argmin(curve))
        partial = partial_cka(
            curve.tolist(),
            sim.to_pretrained[i].tolist(),
            sim.to_pretrained[j].tolist(),
            move=job.spec.analysis.partial_cka_move,
        )
        ev = grp.PairEvidence(
            a=names[i],
            b=names[j],
            cka_min=partial.min if measure == "partial_cka" else float(curve[low]),
            cka_min_layer=partial.min_layer if measure == "partial_cka" else low,
            grad_cosine=float(align.cos_whole[i, j]),
            conflict_rate=float(align.conflict_rate[i, j]),
            cka_waived=names[i] in unlearnt or names[j] in unlearnt,
            measure=measure,
            raw_cka_min=float(curve[low]) if measure == "partial_cka" else None,
        )
        failures = grp.pair_failures(ev, th)
        out.append(
            {
                "tasks": (names[i], names[j]),
                "rep_measure": measure,
                "cka_per_layer": [float(c) for c in curve],
                "cka_min": float(curve[low]),
                "cka_min_layer": low,
                "cka_mean": float(curve.mean()),
                "partial_cka_per_layer": list(partial.per_layer),
                "partial_cka_layers": list(partial.layers),
                "partial_cka_min": partial.min,
                "partial_cka_min_layer": partial.min_layer,
                "grad_cosine": ev.grad_cosine,
                "grad_cosine_per_layer": [float(c) for c in align.cos_per_layer[i, j]],
                "conflict_rate": ev.conflict_rate,
                "cka_waived": ev.cka_waived,
                "tag_affinity": (float(align.tag[i, j]), float(align.tag[j, i])),
                "affinity": ev.affinity,
                "passes": not failures,
                "failures": failures,
            }
        )
    return out


def decide(job: PreparedJob, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage 4: the recommended grouping, a verdict for every group discussed, the candidates."""
    spec = job.spec
    names = list(job.tokenized)
    th = spec.analysis.thresholds
    evidence = [grp.PairEvidence.from_report(p) for p in pairs]
    table = grp.PairTable.from_pairs(names, evidence)
    result = grp.recommend_grouping(
        names,
        table,
        th,
        max_groups=spec.analysis.max_groups,
        exhaustive_limit=spec.analysis.exhaustive_limit,
    )
    candidates = [grp.normalize_candidate(c, names) for c in spec.candidates]
    scored = grp.score_candidates(candidates, names, table, th)

    groups: dict[tuple[str, ...], dict[str, Any]] = {}

    def discuss(tasks: Sequence[str], origin: str) -> None:
        key = tuple(tasks)
        if key in groups:
            if origin not in groups[key]["origins"]:
                groups[key]["origins"].append(origin)
            return
        verdict = grp.judge_group(tasks, table, th)
        cal = spec.analysis.calibration
        p_match = None
        if cal is not None and len(tasks) > 1:
            p_match = cal.p_match(
                group_features(tasks, pairs, waive=cal.waive_unlearnt_cka, measure=cal.rep_measure)
            )
        groups[key] = {
            "tasks": list(tasks),
            "origin": origin,
            "origins": [origin],
            "mtl_matches_stl": verdict.matches,
            "evidence": verdict.evidence,
            "score": verdict.score,
            "margin": verdict.margin,
            "p_match": p_match,
        }

    for group in result.grouping:
        discuss(group, "recommended")
    discuss(names, "all")
    for cand in candidates:
        for group in cand:
            discuss([n for n in names if n in group], "candidate")

    kind, summary = grp.overall_verdict(result.grouping, len(names))
    best = next((c for c in scored if c.best), None)
    return {
        "grouping": result.grouping,
        "groups": list(groups.values()),
        "verdict": {
            "kind": kind,
            "summary": summary,
            "n_models": len(result.grouping),
            "feasible": result.feasible,
            "method": result.method,
            "notes": result.notes,
            "best_candidate": best.index if best else None,
            "beats_candidates": grp.grouping_beats(result, best) if best else None,
        },
        "candidates": [
            {
                "index": c.index,
                "groups": [
                    {"tasks": g.tasks, "mtl_matches_stl": g.matches, "score": g.score}
                    for g in c.groups
                ],
                "passes": c.passes,
                "n_models": c.n_models,
                "score": c.mean_affinity,
                "shortfall": c.shortfall,
                "best": c.best,
            }
            for c in scored
        ],
    }


def run_verification(
    job: PreparedJob,
    groups: Sequence[dict[str, Any]],
    tracker: Progress,
    should_cancel: CancelCheck | None,
) -> list[dict[str, Any]]:
    cfg = job.spec.training
    seeds = [cfg.seed + k for k in range(job.spec.analysis.verify_seeds)]
    todo = [g for g in groups if len(g["tasks"]) > 1]
    need = sorted({n for g in todo for n in g["tasks"]}, key=list(job.tokenized).index)
    plan_steps = [
        sum(steps_per_task(len(job.tokenized[n].train_ids), cfg) for n in g["tasks"]) for g in todo
    ] * len(seeds)
    extra_stl = sum(steps_per_task(len(job.tokenized[n].train_ids), cfg) for n in need) * (
        len(seeds) - 1
    )
    total = sum(plan_steps) + extra_stl
    done = 0
    if len(seeds) > 1:
        sub = Progress(lambda _s, f: tracker.report(int(f * extra_stl), total), {"finetune": 1.0})
        sub.start("finetune")
        run_finetunes(job, sub, should_cancel, None, seeds=seeds[1:], names=need)
        done = extra_stl
    entries = []
    for group in todo:
        results: list[MTLResult] = []
        for seed in seeds:
            sub_tasks = {n: job.tokenized[n] for n in group["tasks"]}

            def on_step(step: int, _t: int, base: int = done) -> None:
                tracker.report(base + step, total)

            mtl = train_mtl(
                pretrained=job.encoder,
                tasks=sub_tasks,
                cfg=cfg,
                device=job.device,
                pad_id=job.pad_id,
                seed=seed,
                on_step=on_step,
                should_cancel=should_cancel,
            )
            results.append(mtl)
            done += mtl.steps
        stl = {n: [(r.macro_f1, r.val_preds) for r in job.stl[n]] for n in group["tasks"]}
        entries.append(
            compare_group(
                group["tasks"],
                job.tokenized,
                stl,
                results,
                tolerance=job.spec.analysis.tolerance,
                predicted=group["mtl_matches_stl"],
            )
        )
    return entries


def settings_report(job: PreparedJob, align: AlignmentResult) -> dict[str, Any]:
    spec = job.spec
    a = spec.analysis
    return {
        "model": spec.model_name,
        "training": {k: getattr(spec.training, k) for k in TRAINING_KEYS},
        "thresholds": {
            "tau_rep": a.thresholds.tau_rep,
            "tau_grad": a.thresholds.tau_grad,
            "rho": a.thresholds.rho,
        },
        "waive_unlearnt_cka": a.waive_unlearnt_cka,
        "rep_measure": a.rep_measure,
        "partial_cka_move": a.partial_cka_move,
        "calibration": None
        if a.calibration is None
        else {
            "source": a.calibration.source,
            "n_groups": a.calibration.n_groups,
            "datasets": list(a.calibration.datasets),
        },
        "max_groups": a.max_groups,
        "min_class_count": a.min_class_count,
        "val_fraction": a.val_fraction,
        "verify": spec.verify,
        "verify_seeds": a.verify_seeds,
        "device": str(job.device),
        "probe_size_used": len(job.probe_texts),
        "layers": int(model_config(job.encoder).num_hidden_layers) + 1,
        "alignment": {"steps": align.steps, "samples": align.samples, "every": a.align_every},
        "candidates": [list(map(list, c)) for c in spec.candidates],
    }


def learning_notes(job: PreparedJob, tasks: list[dict[str, Any]]) -> list[str]:
    """A note for every task whose single-task model did not clear its chance baseline:
    the evidence on its pairs then compares models that do not solve it, and any group with it
    "matches" trivially (a model that learnt nothing cannot lose much)."""
    weak = [t for t in tasks if not t["stl"]["learnt"]]
    notes = []
    for t in weak:
        stl = t["stl"]
        advice = "train longer (epochs, lr) or give it more labelled rows"
        if job.spec.training.class_weights == "none":
            advice += ", or set class_weights to 'balanced' if its classes are imbalanced"
        notes.append(
            f"task {t['name']}: its single-task model (macro-F1 {stl['macro_f1']:.2f}) is no "
            f"better than a predictor that ignores the text ({stl['baseline_macro_f1']:.2f}: "
            f"always {stl['baseline_class']!r}, or guessing); it learnt little of the task, so "
            f"the evidence "
            f"on its pairs and the verdict on any group with it say little: {advice}"
        )
    return notes


def task_reports(job: PreparedJob, sim: Similarity) -> list[dict[str, Any]]:
    out = []
    for k, (name, data) in enumerate(job.data.items()):
        stl = job.stl[name][0]
        base = chance_baseline(job.tokenized[name])
        out.append(
            {
                "name": name,
                "dataset": data.dataset,
                "column": data.column,
                "n_train": data.n_train,
                "n_val": data.n_val,
                "n_missing": data.n_missing,
                "classes": data.classes,
                "set_aside": [{"label": c.label, "count": c.count} for c in data.set_aside],
                "stl": {
                    "macro_f1": stl.macro_f1,
                    "accuracy": stl.accuracy,
                    "steps": stl.steps,
                    "seconds": stl.seconds,
                    "loss_curve": stl.loss_curve,
                    "baseline_macro_f1": base["macro_f1"],
                    "baseline_class": data.classes[base["class_index"]],
                    "learnt": stl.macro_f1 >= base["macro_f1"] + LEARN_MARGIN,
                },
                "cka_to_pretrained": [float(c) for c in sim.to_pretrained[k]],
            }
        )
    return out
