"""End to end: `taskgrouper analyze` on a synthetic planted dataset with the tiny random BERT.

The planted structure: two tasks on latent feature 1, two on feature 2, one on feature 3. The
analysis must group the tasks that share a feature and keep the independent one apart, and the JSON
must follow the recommendation contract. The thresholds are set for this tiny random model (whose
fine-tunes move much further from their start than a pretrained model's do); the defaults are chosen
on the benchmark for real models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from models.schema import Recommendation
from models.synth import SynthSpec, write

TOP_LEVEL = {
    "settings",
    "tasks",
    "pairs",
    "grouping",
    "groups",
    "verdict",
    "candidates",
    "verification",
    "timings",
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[str]]]:
    out = tmp_path_factory.mktemp("synth") / "planted.csv"
    grouping = write(SynthSpec(rows=600, features=(2, 2, 1), noise=0.05, seed=1), out)
    return out, grouping


def _analyze(data: Path, tasks: list[str], model: Path, out: Path, *extra: str) -> dict:
    code = main(
        [
            "analyze",
            str(data),
            "--text-column",
            "text",
            "--tasks",
            ",".join(tasks),
            "--model",
            str(model),
            "--epochs",
            "4",
            "--lr",
            "1e-3",
            "--batch-size",
            "16",
            "--max-length",
            "48",
            "--probe-size",
            "256",
            "--seed",
            "0",
            "--device",
            "cpu",
            # These thresholds are on raw CKA's scale (the tiny encoder is randomly initialised:
            # the partial CKA, read against it, is not what the engine's default is fitted for).
            "--rep-measure",
            "cka",
            "--tau-rep",
            "0.3",
            "--tau-grad",
            "0.3",
            "--rho",
            "0.3",
            "--quiet",
            "--out",
            str(out),
            *extra,
        ]
    )
    assert code == 0
    return json.loads(out.read_text())


def test_analyze_recovers_the_planted_grouping(
    planted: tuple[Path, list[list[str]]],
    tiny_bert: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, grouping = planted
    tasks = [t for g in grouping for t in g]
    rec = _analyze(
        data,
        tasks,
        tiny_bert,
        tmp_path / "rec.json",
        "--candidate",
        "product,product_flag,severity,severity_flag;channel",
    )

    assert sorted(map(sorted, rec["grouping"])) == sorted(map(sorted, grouping))
    assert rec["verdict"]["kind"] == "grouped"
    assert rec["verdict"]["summary"].startswith("3 models")

    # The contract: top-level keys and their shapes.
    assert set(rec) == TOP_LEVEL
    Recommendation.model_validate(rec)
    n_layers = rec["settings"]["layers"]
    assert len(rec["pairs"]) == len(tasks) * (len(tasks) - 1) // 2
    for pair in rec["pairs"]:
        assert len(pair["cka_per_layer"]) == n_layers == len(pair["grad_cosine_per_layer"])
        assert pair["cka_min"] == min(pair["cka_per_layer"])
        assert pair["cka_per_layer"][pair["cka_min_layer"]] == pair["cka_min"]
        assert 0.0 <= pair["conflict_rate"] <= 1.0
        assert len(pair["tag_affinity"]) == 2
    for task in rec["tasks"]:
        assert task["n_train"] > task["n_val"] > 0
        assert 0.0 <= task["stl"]["macro_f1"] <= 1.0
    mean_f1 = sum(t["stl"]["macro_f1"] for t in rec["tasks"]) / len(rec["tasks"])
    assert mean_f1 > 0.5  # the tiny model really learned the tasks (chance is 0.33-0.5)
    origins = {g["origin"] for g in rec["groups"]}
    assert {"recommended", "all", "candidate"} <= origins
    all_group = next(g for g in rec["groups"] if "all" in g["origins"])
    assert all_group["mtl_matches_stl"] is False
    assert any(
        "CKA" in e or "gradient cosine" in e or "conflict" in e for e in all_group["evidence"]
    )
    # The candidate merges two independent features: it fails, and the recommendation beats it.
    assert rec["candidates"][0]["best"] is True and rec["candidates"][0]["passes"] is False
    assert rec["verdict"]["beats_candidates"] is True
    assert rec["verification"] is None
    assert {"prepare", "finetune", "similarity", "alignment", "grouping", "total"} <= set(
        rec["timings"]
    )
    printed = capsys.readouterr().out
    assert "Recommendation: 3 models" in printed and "Pairs:" in printed


def test_analyze_with_verification(
    planted: tuple[Path, list[list[str]]], tiny_bert: Path, tmp_path: Path
) -> None:
    data, grouping = planted
    rec = _analyze(
        data,
        [*grouping[0], grouping[2][0]],
        tiny_bert,
        tmp_path / "v.json",
        "--verify",
        "--class-weights",
        "balanced",
    )
    assert rec["settings"]["training"]["class_weights"] == "balanced"
    verified = rec["verification"]
    non_singletons = [g["tasks"] for g in rec["groups"] if len(g["tasks"]) > 1]
    assert [v["tasks"] for v in verified] == non_singletons
    for entry in verified:
        assert entry["outcome"] in ("confirmed", "refuted")
        assert entry["noise_method"] == "bootstrap"
        for t in entry["per_task"]:
            assert t["delta"] == pytest.approx(t["mtl_macro_f1"] - t["stl_macro_f1"])
            assert t["tolerance"] >= 0.01
            assert t["effect"] in ("helps", "neutral", "hurts")
    assert "verification" in rec["timings"]


def test_analyze_reports_bad_data_clearly(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,a\nworld,a\n")
    code = main(
        [
            "analyze",
            str(bad),
            "--text-column",
            "body",
            "--tasks",
            "label,other",
            "--model",
            str(tiny_bert),
            "--out",
            str(tmp_path / "x.json"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "body" in err and "error:" in err
    assert not (tmp_path / "x.json").exists()
