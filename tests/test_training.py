"""The training recipe's building blocks: batching, padding, pooling, the task schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.options import TrainingConfig
from models.training import (
    TokenizedTask,
    build_schedule,
    chance_baseline,
    class_weights,
    collate,
    length_grouped_batches,
    mean_pool,
    scores,
    steps_per_task,
    task_loss_fns,
)


@given(
    st.lists(st.integers(1, 60), min_size=1, max_size=300), st.integers(1, 40), st.integers(0, 99)
)
@settings(max_examples=60, deadline=None)
def test_length_grouped_batches_cover_every_example_once(
    lengths: list[int], batch_size: int, seed: int
) -> None:
    batches = length_grouped_batches(lengths, batch_size, np.random.default_rng(seed))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)


def test_length_grouping_reduces_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=2000).tolist()
    grouped = length_grouped_batches(lengths, 32, np.random.default_rng(1))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in grouped)
    order = np.random.default_rng(1).permutation(len(lengths))
    plain = sum(
        len(b) * max(lengths[i] for i in b) for b in np.array_split(order, len(order) // 32)
    )
    assert padded < 0.75 * plain


def test_collate_pads_to_the_longest_in_batch() -> None:
    ids, mask = collate([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 2.0]]


def _task(n: int) -> TokenizedTask:
    ids = [[1] * (1 + i % 7) for i in range(n)]
    return TokenizedTask(ids, np.zeros(n, dtype=np.int64), ids[:2], np.zeros(2, dtype=np.int64), 2)


def test_schedule_gives_each_task_its_single_task_steps() -> None:
    cfg = TrainingConfig(epochs=2, batch_size=8)
    tasks = {"big": _task(100), "small": _task(20)}
    schedule = build_schedule(tasks, cfg, np.random.default_rng(0))
    counts = {name: sum(1 for n, _ in schedule if n == name) for name in tasks}
    assert counts == {"big": steps_per_task(100, cfg), "small": steps_per_task(20, cfg)}
    assert counts == {"big": 26, "small": 6}
    # every example of a task is seen exactly `epochs` times
    seen = np.concatenate([b for n, b in schedule if n == "big"])
    assert np.bincount(seen, minlength=100).tolist() == [2] * 100


def test_fast_mode_trains_every_task_for_a_share_of_its_steps() -> None:
    full, fast = (
        TrainingConfig(epochs=2, batch_size=8),
        TrainingConfig(epochs=2, batch_size=8, step_fraction=0.25),
    )
    assert [steps_per_task(n, full) for n in (100, 20, 1)] == [26, 6, 2]
    assert [steps_per_task(n, fast) for n in (100, 20, 1)] == [7, 2, 1]  # ceil, at least 1
    tasks = {"big": _task(100), "small": _task(20)}
    schedule = build_schedule(tasks, fast, np.random.default_rng(0))
    assert len(schedule) == 9
    with pytest.raises(ValueError, match="step_fraction"):
        TrainingConfig(step_fraction=0.0)


def test_max_steps_caps_each_task() -> None:
    cfg = TrainingConfig(epochs=5, batch_size=8, max_steps=3)
    schedule = build_schedule({"a": _task(100)}, cfg, np.random.default_rng(0))
    assert len(schedule) == 3


def _labelled(labels: list[int], n_classes: int) -> TokenizedTask:
    ids = [[1, 2, 3]] * len(labels)
    return TokenizedTask(
        train_ids=ids,
        train_labels=np.asarray(labels, dtype=np.int64),
        val_ids=ids,
        val_labels=np.asarray(labels, dtype=np.int64),
        n_classes=n_classes,
    )


@given(st.lists(st.integers(0, 5), min_size=1, max_size=200), st.integers(0, 3))
@settings(max_examples=80, deadline=None)
def test_balanced_weights_give_every_present_class_the_same_total(
    labels: list[int], extra_classes: int
) -> None:
    n_classes = max(labels) + 1 + extra_classes
    task = _labelled(labels, n_classes)
    w = class_weights(task, TrainingConfig(class_weights="balanced"))
    assert w is not None and w.shape == (n_classes,)
    counts = np.bincount(labels, minlength=n_classes)
    totals = counts * w
    present = counts > 0
    # Each present class carries n / K of the weight; the examples' weights sum to n.
    assert np.allclose(totals[present], len(labels) / present.sum())
    assert np.isclose(totals.sum(), len(labels))
    assert np.all(w[~present] == 0.0)
    assert class_weights(task, TrainingConfig()) is None  # "none": plain cross-entropy


def test_balanced_weights_of_balanced_classes_are_one() -> None:
    w = class_weights(_labelled([0, 1, 2] * 5, 3), TrainingConfig(class_weights="balanced"))
    assert np.allclose(w, 1.0)  # type: ignore[arg-type]


def test_task_losses_carry_the_weights() -> None:
    tasks = {"a": _labelled([0, 0, 0, 1], 2), "b": _labelled([0, 1], 2)}
    fns = task_loss_fns(tasks, TrainingConfig(class_weights="balanced"), torch.device("cpu"))
    assert fns["a"].weight is not None
    assert torch.allclose(fns["a"].weight, torch.tensor([4 / 6, 4 / 2]))
    plain = task_loss_fns(tasks, TrainingConfig(), torch.device("cpu"))
    assert plain["a"].weight is None and plain["b"].weight is None


def test_class_weights_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="class_weights='inverse'"):
        TrainingConfig(class_weights="inverse")  # type: ignore[arg-type]


def test_chance_baseline_is_the_best_predictor_that_ignores_the_text() -> None:
    task = TokenizedTask(
        train_ids=[[1]] * 6,
        train_labels=np.array([2, 2, 2, 0, 1, 1]),
        val_ids=[[1]] * 4,
        val_labels=np.array([2, 0, 1, 2]),
        n_classes=3,
    )
    base = chance_baseline(task)
    assert base["class_index"] == 2
    assert base["accuracy"] == pytest.approx(0.5)
    # Always class 2: precision 1/2, recall 1 (F1 2/3); classes 0, 1 score 0.
    assert base["majority_macro_f1"] == pytest.approx((2 / 3) / 3)
    # Guessing with the training shares p = (1/6, 2/6, 3/6) against validation shares
    # q = (1/4, 1/4, 2/4): class k scores 2 q p / (q + p).
    q, p = np.array([0.25, 0.25, 0.5]), np.array([1, 2, 3]) / 6
    assert base["prior_macro_f1"] == pytest.approx(float(np.mean(2 * q * p / (q + p))))
    u = np.full(3, 1 / 3)
    assert base["uniform_macro_f1"] == pytest.approx(float(np.mean(2 * q * u / (q + u))))
    assert base["macro_f1"] == max(
        base["majority_macro_f1"], base["prior_macro_f1"], base["uniform_macro_f1"]
    )


@given(st.lists(st.integers(0, 3), min_size=8, max_size=120), st.integers(0, 99))
@settings(max_examples=40, deadline=None)
def test_guessing_with_the_shares_scores_as_the_baseline_says(labels: list[int], seed: int) -> None:
    """The guessing floors are expectations: a large simulated guesser lands on them."""
    y = np.asarray(labels)
    task = TokenizedTask(
        train_ids=[[1]] * len(y), train_labels=y, val_ids=[[1]] * len(y), val_labels=y, n_classes=4
    )
    base = chance_baseline(task)
    rng = np.random.default_rng(seed)
    # Many copies of the split, so that the empirical F1 nears its expectation: at 2,000 copies a
    # class with one label in eight has a per-class F1 SD of about 0.007 (at 200 copies it was
    # 0.023, and a `make test` run drew an example whose macro-F1 fell 0.031 from it).
    reps = np.repeat(y, 2000)
    shares = np.bincount(y, minlength=4) / len(y)
    guess = rng.choice(4, size=len(reps), p=shares)
    f1 = scores(reps, guess, 4)["macro_f1"]
    assert f1 == pytest.approx(base["prior_macro_f1"], abs=0.02)
