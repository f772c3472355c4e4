"""The pipeline entry point: progress, cancellation, tasks from several datasets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.calibration import group_features
from models.grouping import PairEvidence, Thresholds
from models.options import (
    LEARN_MARGIN,
    AnalysisConfig,
    DatasetSpec,
    JobSpec,
    TaskSpec,
    TrainingConfig,
)
from models.pipeline import STAGES, run_job
from models.similarity import partial_cka
from models.synth import SynthSpec, generate
from models.training import JobCancelled

FAST = TrainingConfig(epochs=1, lr=1e-3, batch_size=16, max_length=40, probe_size=64, seed=0)
ANALYSIS = AnalysisConfig(
    device="cpu", align_steps=3, align_every=2, thresholds=Thresholds(0.3, 0.3, 0.3)
)


def _spec(model: Path, **kw: object) -> JobSpec:
    frame, _ = generate(SynthSpec(rows=200, features=(2, 1), seed=3))
    return JobSpec(
        datasets=[DatasetSpec("tickets", frame, "text")],
        tasks=[TaskSpec(n, "tickets", n) for n in ("product", "product_flag", "severity")],
        model_name="tiny",
        model_dir=model,
        training=FAST,
        analysis=ANALYSIS,
        **kw,  # type: ignore[arg-type]
    )


def test_progress_is_monotone_and_ends_at_one(tiny_bert: Path) -> None:
    seen: list[tuple[str, float]] = []
    rec = run_job(_spec(tiny_bert, verify=True), progress=lambda s, f: seen.append((s, f)))
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    stages = list(dict.fromkeys(s for s, _ in seen))
    assert stages == [*STAGES, "done"]
    assert rec["verification"] is not None
    # Every stage advances the bar: no stage swallows the whole range at its start.
    starts = {s: f for s, f in reversed(seen)}
    assert starts["finetune"] < 0.1 < starts["alignment"] < starts["verification"] < 1.0


def test_cancellation_stops_between_steps(tiny_bert: Path) -> None:
    calls = {"n": 0}

    def should_cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(JobCancelled):
        run_job(_spec(tiny_bert), should_cancel=should_cancel)
    assert calls["n"] == 6  # it stopped at the first check that said so


def test_tasks_from_several_datasets(tiny_bert: Path) -> None:
    cervical, _ = generate(SynthSpec(rows=160, features=(2,), seed=4))
    lumbar, _ = generate(SynthSpec(rows=160, features=(1, 1), seed=5))
    spec = JobSpec(
        datasets=[DatasetSpec("cervical", cervical, "text"), DatasetSpec("lumbar", lumbar, "text")],
        tasks=[
            TaskSpec("c_product", "cervical", "product"),
            TaskSpec("c_flag", "cervical", "product_flag"),
            TaskSpec("l_severity", "lumbar", "severity"),
        ],
        model_name="tiny",
        model_dir=tiny_bert,
        training=FAST,
        analysis=ANALYSIS,
    )
    rec = run_job(spec)
    assert [t["dataset"] for t in rec["tasks"]] == ["cervical", "cervical", "lumbar"]
    assert rec["settings"]["probe_size_used"] == 64
    assert len(rec["pairs"]) == 3


def test_job_spec_rejects_duplicates_and_unknown_datasets(tiny_bert: Path) -> None:
    frame, _ = generate(SynthSpec(rows=50, features=(2,), seed=1))
    ds = [DatasetSpec("d", frame, "text")]
    with pytest.raises(ValueError, match="more than once"):
        JobSpec(
            ds,
            [TaskSpec("a", "d", "product"), TaskSpec("a", "d", "product_flag")],
            "tiny",
            tiny_bert,
        )
    with pytest.raises(ValueError, match="unknown dataset 'x'"):
        JobSpec(
            ds, [TaskSpec("a", "d", "product"), TaskSpec("b", "x", "product")], "tiny", tiny_bert
        )
    with pytest.raises(ValueError, match="at least 2 tasks"):
        JobSpec(ds, [TaskSpec("a", "d", "product")], "tiny", tiny_bert)


def test_training_config_bounds() -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        TrainingConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        TrainingConfig(lr=-1.0)


def test_artifacts_are_safetensors_that_reload(tiny_bert: Path, tmp_path: Path) -> None:
    from models.artifacts import load_tensors
    from models.registry import load_encoder
    from models.training import TaskModel

    run_job(_spec(tiny_bert), artifact_dir=tmp_path)
    weights = sorted(tmp_path.glob("stl-*-seed0.safetensors"))
    reps = sorted(tmp_path.glob("stl-*-seed0.reps.safetensors"))
    assert [w.name for w in weights] == [
        "stl-product-seed0.safetensors",
        "stl-product_flag-seed0.safetensors",
        "stl-severity-seed0.safetensors",
    ]
    assert len(reps) == 3
    assert not list(tmp_path.glob("*.tmp"))  # nothing half-written left behind
    model = TaskModel(load_encoder(tiny_bert), {"product": 3}, seed=1)
    model.load_state_dict(load_tensors(weights[0]))
    assert load_tensors(reps[0])["reps"].shape == (3, 64, 32)  # (L+1, probe, hidden)


def test_stages_run_apart_give_the_same_recommendation(tiny_bert: Path, tmp_path: Path) -> None:
    """The service's path: fine-tunes as separate steps, results stored and reloaded, then the
    analysis; it must give what the one-call path gives."""
    from models.artifacts import load_tensors
    from models.finetune import SingleTaskResult
    from models.pipeline import Progress, analyze, prepare, run_finetunes

    whole = run_job(_spec(tiny_bert))
    job = prepare(_spec(tiny_bert))
    for name in job.tokenized:
        run_finetunes(job, Progress(None, {"finetune": 1.0}), None, tmp_path, names=[name])
    records = {n: r[0].to_record() for n, r in job.stl.items()}
    fresh = prepare(_spec(tiny_bert))
    for name, record in records.items():
        reps = load_tensors(Path(record["reps_path"]))["reps"]
        fresh.stl[name] = [SingleTaskResult.from_record(record, reps)]
    seen: list[float] = []
    apart = analyze(fresh, progress=lambda _s, f: seen.append(f), start_fraction=0.6)
    assert seen[0] >= 0.6 and seen[-1] == 1.0 and seen == sorted(seen)
    for rec in (apart, whole):
        for task in rec["tasks"]:
            task["stl"].pop("seconds")  # wall time differs between runs
    for key in ("grouping", "pairs", "tasks", "groups", "verdict"):
        assert apart[key] == whole[key], key


def _with_noise_task(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``noise``: labels unrelated to the text, 90% one class (no model can learn them; with
    balanced class weights a model spreads its guesses, which the chance baseline covers)."""
    rng = np.random.default_rng(0)
    frame = frame.copy()
    frame["noise"] = np.where(rng.random(len(frame)) < 0.9, "common", "rare")
    return frame


@pytest.mark.parametrize("waive", [False, True])
def test_a_pair_with_a_task_that_learnt_nothing_is_judged_without_its_cka(
    tiny_bert: Path, waive: bool
) -> None:
    frame, _ = generate(SynthSpec(rows=200, features=(2,), seed=3))
    # CKA at most 1.0: only a waived pair (read as 1.0) passes; two tasks' models differ.
    strict = Thresholds(tau_rep=1.0, tau_grad=-1.0, rho=1.0)
    spec = JobSpec(
        datasets=[DatasetSpec("tickets", _with_noise_task(frame), "text")],
        tasks=[TaskSpec(n, "tickets", n) for n in ("product", "product_flag", "noise")],
        model_name="tiny",
        model_dir=tiny_bert,
        training=dataclasses.replace(FAST, epochs=5, lr=3e-3),  # enough for the two real tasks
        analysis=dataclasses.replace(
            ANALYSIS, thresholds=strict, waive_unlearnt_cka=waive, rep_measure="cka"
        ),
    )
    rec = run_job(spec)
    assert rec["settings"]["waive_unlearnt_cka"] is waive
    learnt = {t["name"]: t["stl"]["learnt"] for t in rec["tasks"]}
    assert learnt == {"product": True, "product_flag": True, "noise": False}
    for p in rec["pairs"]:
        a, b = p["tasks"]
        assert p["cka_waived"] is (waive and not (learnt[a] and learnt[b]))
        assert p["passes"] is p["cka_waived"]  # the gradient conditions are loose here
        assert p["affinity"] == pytest.approx(
            0.5 * (1.0 if p["cka_waived"] else p["cka_min"]) + 0.5 * p["grad_cosine"]
        )
    # p_match reads the view its calibration was fitted on (the shipped one: no waiver, the
    # default measure), whatever the job's own settings.
    cal = spec.analysis.calibration
    assert cal is not None and not cal.waive_unlearnt_cka
    for g in rec["groups"]:
        if len(g["tasks"]) > 1:
            plain = group_features(g["tasks"], rec["pairs"], measure=cal.rep_measure)
            assert g["p_match"] == pytest.approx(cal.p_match(plain))
    groups = {tuple(g["tasks"]): g for g in rec["groups"]}
    # The pair of the two tasks that learnt is read, and fails, whether or not the others are
    # waived; without the waiver the pairs with noise fail too.
    everything = groups[("product", "product_flag", "noise")]
    assert not everything["mtl_matches_stl"]
    assert len(everything["evidence"]) == (1 if waive else 3)
    assert all("CKA" in e for e in everything["evidence"])
    assert any(e.startswith("tasks product, product_flag:") for e in everything["evidence"])


@pytest.mark.parametrize("weights", ["none", "balanced"])
def test_each_task_is_judged_against_its_chance_baseline(tiny_bert: Path, weights: str) -> None:
    frame, _ = generate(SynthSpec(rows=200, features=(2,), seed=3))
    spec = JobSpec(
        datasets=[DatasetSpec("tickets", _with_noise_task(frame), "text")],
        tasks=[TaskSpec(n, "tickets", n) for n in ("product", "noise")],
        model_name="tiny",
        model_dir=tiny_bert,
        training=dataclasses.replace(FAST, class_weights=weights),  # type: ignore[arg-type]
        analysis=ANALYSIS,
    )
    rec = run_job(spec)
    assert rec["settings"]["training"]["class_weights"] == weights
    notes = rec["verdict"]["notes"]
    for t in rec["tasks"]:
        stl = t["stl"]
        assert 0.0 <= stl["baseline_macro_f1"] <= 1.0
        assert stl["learnt"] == (stl["macro_f1"] >= stl["baseline_macro_f1"] + LEARN_MARGIN)
        flagged = [n for n in notes if n.startswith(f"task {t['name']}:")]
        assert len(flagged) == (0 if stl["learnt"] else 1)
    noise = next(t for t in rec["tasks"] if t["name"] == "noise")
    assert noise["stl"]["baseline_class"] == "common"
    assert noise["stl"]["learnt"] is False
    (note,) = [n for n in notes if n.startswith("task noise:")]
    assert "always 'common', or guessing" in note
    assert ("class_weights" in note) == (weights == "none")  # advice not already taken


def test_a_job_can_judge_pairs_on_their_partial_cka(tiny_bert: Path) -> None:
    """With rep_measure "partial_cka" every pair report carries both measures, the verdict reads
    the partial one (computed from the reported CKAs as models.similarity.partial_cka does) and
    names it; p_match still reads the view its calibration was fitted on."""
    loose = Thresholds(tau_rep=0.0, tau_grad=-1.0, rho=1.0)  # only the partial CKA can fail
    analysis = dataclasses.replace(
        ANALYSIS, thresholds=loose, rep_measure="partial_cka", partial_cka_move=0.02
    )
    rec = run_job(dataclasses.replace(_spec(tiny_bert), analysis=analysis))
    assert rec["settings"]["rep_measure"] == "partial_cka"
    assert rec["settings"]["partial_cka_move"] == 0.02
    drift = {t["name"]: t["cka_to_pretrained"] for t in rec["tasks"]}
    # One epoch moves the tiny models a little, some more than 0.02 (read), some less (not).
    read = [bool(p["partial_cka_layers"]) for p in rec["pairs"]]
    assert any(read) and not all(read), [t["cka_to_pretrained"] for t in rec["tasks"]]
    for p in rec["pairs"]:
        a, b = p["tasks"]
        want = partial_cka(p["cka_per_layer"], drift[a], drift[b], move=0.02)
        assert p["rep_measure"] == "partial_cka"
        assert p["partial_cka_per_layer"] == pytest.approx(list(want.per_layer))
        assert p["partial_cka_layers"] == list(want.layers)
        assert (p["partial_cka_min"], p["partial_cka_min_layer"]) == (want.min, want.min_layer)
        assert p["cka_min"] == min(p["cka_per_layer"])  # the raw measure is still reported
        ev = PairEvidence.from_report(p)
        assert ev.cka_min == want.min and ev.measure == "partial_cka"
        assert p["passes"] is (want.min >= 0.0)
        # An unread pair (no layer where both moved) ranks by its plain CKA, a read one by its
        # partial CKA.
        rep = p["cka_min"] if want.min_layer is None else want.min
        assert p["affinity"] == pytest.approx(0.5 * rep + 0.5 * p["grad_cosine"])
    cal = analysis.calibration
    assert cal is not None
    for g in rec["groups"]:
        if len(g["tasks"]) > 1:
            assert all("partial CKA" in e for e in g["evidence"])
            plain = group_features(g["tasks"], rec["pairs"], measure=cal.rep_measure)
            assert g["p_match"] == pytest.approx(cal.p_match(plain))
