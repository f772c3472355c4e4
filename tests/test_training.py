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
    collate,
    length_grouped_batches,
    mean_pool,
    steps_per_task,
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
