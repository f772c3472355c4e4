"""Tests for models.synth: synthetic multi-task datasets with a planted grouping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from models.data import build_task, read_table
from models.synth import FEATURES, MAX_CLASSES, SynthSpec, generate, task_names, vocabulary, write

EXAMPLES = Path(__file__).resolve().parent.parent / "models" / "examples"
EXAMPLE_SPEC = SynthSpec(rows=800, features=(2, 2, 1), classes=3, noise=0.1, seed=7)


def task_accuracy(frame: pd.DataFrame, column: str) -> float:
    """Validation accuracy of a bag-of-words logistic regression on one task."""
    data = build_task(frame, name=column, text_column="text", label_column=column, dataset="s")
    vectorizer = CountVectorizer(token_pattern=r"\S+", lowercase=False)
    x_train = vectorizer.fit_transform(data.train_texts)
    model = LogisticRegression(max_iter=1000).fit(x_train, data.train_labels)
    predicted = model.predict(vectorizer.transform(data.val_texts))
    return float(np.mean(predicted == np.asarray(data.val_labels)))


def cue_values(frame: pd.DataFrame, feature_index: int, classes: int) -> list[int]:
    """The value of a feature that each text's cue word points at."""
    lookup = {
        word: value
        for value, (_, words) in enumerate(FEATURES[feature_index].values[:classes])
        for word in words
    }
    found = []
    for text in frame["text"]:
        hits = [lookup[w] for w in text.split() if w in lookup]
        assert len(hits) == 1, text
        found.append(hits[0])
    return found


def test_deterministic_for_a_seed() -> None:
    spec = SynthSpec(rows=200, seed=3, missing=0.1)
    first, grouping = generate(spec)
    again, grouping_again = generate(spec)
    pd.testing.assert_frame_equal(first, again)
    assert grouping == grouping_again
    other, _ = generate(SynthSpec(rows=200, seed=4, missing=0.1))
    assert first["text"].tolist() != other["text"].tolist()


def test_planted_grouping_matches_features() -> None:
    frame, grouping = generate(SynthSpec(rows=50, features=(2, 2, 1)))
    assert grouping == [["product", "product_flag"], ["severity", "severity_flag"], ["channel"]]
    assert list(frame.columns) == ["text", *[t for group in grouping for t in group]]

    spec = SynthSpec(rows=50, features=(3, 0, 1, 6), classes=4)
    frame, grouping = generate(spec)
    assert [len(g) for g in grouping] == [3, 1, 6]
    assert grouping[0] == ["product", "product_flag", "product_tier"]
    assert grouping[1] == ["channel"]
    assert grouping[2][:5] == [
        "region",
        "region_flag",
        "region_tier",
        "region_alert",
        "region_parity",
    ]
    names = [t for g in grouping for t in g]
    assert len(set(names)) == len(names)
    assert grouping == task_names(spec)
    # the distractor feature (severity, 0 tasks) still has its cue word in every text
    cue_values(frame, 1, spec.classes)


def test_tasks_on_a_feature_are_functions_of_one_latent_value() -> None:
    frame, grouping = generate(SynthSpec(rows=300, features=(5, 1), classes=4, noise=0.0))
    product = frame["product"]
    assert set(product) == {"billing", "login", "search", "reports"}
    for task in grouping[0][1:]:
        table = pd.crosstab(product, frame[task])
        assert ((table > 0).sum(axis=1) == 1).all(), task  # product determines the task
    assert dict(frame.groupby("product")["product_flag"].first()) == {
        "billing": "yes",
        "login": "no",
        "reports": "no",
        "search": "no",
    }
    assert set(frame.loc[product.isin(["billing", "login"]), "product_tier"]) == {"low"}
    assert set(frame.loc[product == "reports", "product_alert"]) == {"yes"}
    # at noise 0 the label is the value the cue word points at
    names = [name for name, _ in FEATURES[0].values]
    assert [names[v] for v in cue_values(frame, 0, 4)] == product.tolist()


def test_noise_rates() -> None:
    noise, rows = 0.2, 4000
    frame, _ = generate(SynthSpec(rows=rows, features=(1,), classes=3, noise=noise, seed=1))
    names = [name for name, _ in FEATURES[0].values]
    agree = np.mean(
        [names[v] == y for v, y in zip(cue_values(frame, 0, 3), frame["product"], strict=True)]
    )
    # agreement: both right, or both wrong and landing on the same other value
    expected = (1 - noise) ** 2 + noise**2 / 2
    assert abs(agree - expected) < 0.03


def test_labels_are_learnable_and_noise_hurts() -> None:
    clean, grouping = generate(SynthSpec(rows=600, noise=0.0, seed=2))
    noisy, _ = generate(SynthSpec(rows=600, noise=0.5, seed=2))
    for task in [t for group in grouping for t in group]:
        clean_acc = task_accuracy(clean, task)
        noisy_acc = task_accuracy(noisy, task)
        assert clean_acc >= 0.95, (task, clean_acc)
        assert noisy_acc < 0.8, (task, noisy_acc)
        assert noisy_acc < clean_acc - 0.15


def test_other_features_do_not_predict_a_task() -> None:
    """A task is not learnable from the cue words of another feature (the structure is
    planted, not leaked)."""
    frame, _ = generate(SynthSpec(rows=1200, features=(1, 1), classes=3, noise=0.0, seed=5))
    product_cues = {w for _, words in FEATURES[0].values for w in words}
    masked = frame.copy()
    masked["text"] = [
        " ".join("the" if w in product_cues else w for w in text.split()) for text in frame["text"]
    ]
    assert task_accuracy(masked, "product") < 0.5  # chance is 1/3
    assert task_accuracy(masked, "severity") >= 0.95


def test_vocabulary_covers_generated_words() -> None:
    vocab = vocabulary()
    assert vocab == sorted(set(vocab))
    assert all(w == w.lower() and w.strip() == w and w for w in vocab)
    spec = SynthSpec(rows=400, features=(1,) * len(FEATURES), classes=MAX_CLASSES, noise=0.3)
    frame, _ = generate(spec)
    words = {w for text in frame["text"] for w in text.split(" ")}
    assert words <= set(vocab)
    cue_words = [w for f in FEATURES for _, ws in f.values for w in ws]
    assert len(cue_words) == len(set(cue_words))
    assert set(cue_words) <= set(vocab)


def test_at_least_eight_features() -> None:
    assert len(FEATURES) >= 8
    assert len({f.name for f in FEATURES}) == len(FEATURES)
    spec = SynthSpec(rows=20, features=(1,) * 8)
    assert len(generate(spec)[1]) == 8


def test_text_lengths() -> None:
    frame, _ = generate(SynthSpec(rows=500))
    lengths = pd.Series([len(text.split()) for text in frame["text"]])
    assert lengths.min() >= 12
    assert lengths.max() <= 40
    assert lengths.nunique() > 5


@pytest.mark.parametrize("missing", [0.1, 0.25])
def test_missing_share_respected(missing: float) -> None:
    rows = 400
    base, grouping = generate(SynthSpec(rows=rows, seed=9))
    frame, _ = generate(SynthSpec(rows=rows, seed=9, missing=missing))
    assert frame["text"].tolist() == base["text"].tolist()
    masks = []
    for task in [t for group in grouping for t in group]:
        missing_rows = frame[task].isna()
        assert int(missing_rows.sum()) == round(missing * rows)
        present = ~missing_rows
        assert frame.loc[present, task].tolist() == base.loc[present, task].tolist()
        masks.append(missing_rows.to_numpy())
    assert len({m.tobytes() for m in masks}) > 1  # each task has its own missing rows


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rows": 0},
        {"features": ()},
        {"features": (0, 0)},
        {"features": (-1, 2)},
        {"features": (1,) * (len(FEATURES) + 1)},
        {"classes": 1},
        {"classes": MAX_CLASSES + 1},
        {"noise": 1.0},
        {"noise": -0.1},
        {"missing": 1.0},
    ],
)
def test_spec_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SynthSpec(**kwargs)  # type: ignore[arg-type]


def test_write_and_read_back(tmp_path: Path) -> None:
    spec = SynthSpec(rows=120, features=(1, 2), missing=0.1, seed=11)
    out = tmp_path / "sub" / "demo.csv"
    grouping = write(spec, out)
    frame, expected_grouping = generate(spec)
    assert grouping == expected_grouping
    pd.testing.assert_frame_equal(read_table(out), frame)
    sidecar = json.loads((tmp_path / "sub" / "demo.planted.json").read_text())
    assert sidecar["grouping"] == grouping
    assert SynthSpec(**{**sidecar["spec"], "features": tuple(sidecar["spec"]["features"])}) == spec


def test_bundled_example_is_current(tmp_path: Path) -> None:
    csv_path = EXAMPLES / "tickets.csv"
    planted_path = EXAMPLES / "tickets.planted.json"
    assert csv_path.stat().st_size < 150_000
    write(EXAMPLE_SPEC, tmp_path / "tickets.csv")
    assert csv_path.read_bytes() == (tmp_path / "tickets.csv").read_bytes()
    assert planted_path.read_bytes() == (tmp_path / "tickets.planted.json").read_bytes()
    planted = json.loads(planted_path.read_text())
    assert planted["grouping"] == [
        ["product", "product_flag"],
        ["severity", "severity_flag"],
        ["channel"],
    ]
    frame = read_table(csv_path)
    assert len(frame) == 800
    for task in [t for group in planted["grouping"] for t in group]:
        build_task(frame, name=task, text_column="text", label_column=task, dataset="tickets.csv")
