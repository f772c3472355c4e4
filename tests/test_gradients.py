"""Stage 3: gradient cosines against a hand computation, and the sign of TAG's lookahead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.gradients import _lookahead, block_cosines, encoder_blocks, gradient_alignment
from models.options import AnalysisConfig, TrainingConfig
from models.registry import load_encoder, load_tokenizer
from models.training import TaskModel, TokenizedTask, collate, fit, pad_id_of, tokenize

TEXTS = [
    "billing portal freezing after the update",
    "mobile app crashes on login",
    "refund request for a duplicate charge",
    "password reset link never arrives",
    "the invoice shows the wrong amount",
    "app is slow on the tablet",
    "cannot download the monthly report",
    "checkout page times out",
] * 4


def _task(tokenizer: object, labels: list[int], n_classes: int = 2) -> TokenizedTask:
    ids = tokenize(tokenizer, TEXTS, 32)
    y = np.asarray(labels, dtype=np.int64)
    return TokenizedTask(
        train_ids=ids, train_labels=y, val_ids=ids[:8], val_labels=y[:8], n_classes=n_classes
    )


def test_block_cosines_match_hand_computation(tiny_bert: Path) -> None:
    tok = load_tokenizer(tiny_bert)
    torch.manual_seed(0)
    model = TaskModel(load_encoder(tiny_bert), {"a": 2, "b": 3}, seed=0)
    ids, mask = collate(tokenize(tok, TEXTS[:8], 32), pad_id_of(tok), torch.device("cpu"))
    labels = {"a": torch.tensor([0, 1] * 4), "b": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}
    n_layers = model.encoder.config.num_hidden_layers
    blocks = encoder_blocks(model.encoder, n_layers)
    assert len(blocks[0]) > 0 and all(len(b) > 0 for b in blocks[1 : n_layers + 1])
    assert not any(name.startswith("pooler") for block in blocks for name, _ in block)

    per_task: dict[str, list[list[torch.Tensor]]] = {}
    for name in ("a", "b"):
        loss = nn.functional.cross_entropy(model(ids, mask, name), labels[name])
        params = [p for block in blocks for _, p in block]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        it = iter(grads)
        per_task[name] = [
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for (_, p), g in zip(block, [next(it) for _ in block], strict=True)
            ]
            for block in blocks
        ]
    flat = torch.stack([torch.cat([torch.cat(b) for b in per_task[n] if b]) for n in ("a", "b")])
    bounds, offset = [], 0
    for block in blocks[:-1]:
        size = sum(p.numel() for _, p in block)
        bounds.append((offset, offset + size))
        offset += size
    per_block, whole = block_cosines(flat, bounds)

    for layer in range(n_layers + 1):
        ga = torch.cat(per_task["a"][layer]).double().numpy()
        gb = torch.cat(per_task["b"][layer]).double().numpy()
        expected = ga @ gb / (np.linalg.norm(ga) * np.linalg.norm(gb))
        assert per_block[layer, 0, 1].item() == pytest.approx(expected, abs=1e-9)
        assert per_block[layer, 0, 0].item() == pytest.approx(1.0, abs=1e-9)
    ga, gb = (flat[k].double().numpy() for k in (0, 1))
    assert whole[0, 1].item() == pytest.approx(ga @ gb / np.linalg.norm(ga) / np.linalg.norm(gb))
    assert torch.allclose(whole, whole.T)


def test_zero_gradient_has_zero_cosine() -> None:
    grads = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    per_block, whole = block_cosines(grads, [(0, 2), (2, 4)])
    assert whole[0, 1] == 0 and per_block[1, 0, 0] == 0
    assert not torch.isnan(per_block).any()


@pytest.mark.parametrize(("sign", "expect_positive"), [(1.0, True), (-1.0, False)])
def test_tag_lookahead_sign_on_constructed_case(
    tiny_bert: Path, sign: float, expect_positive: bool
) -> None:
    """Tasks a and b share data and head; b's gradient is a's (aligned) or its negation (opposed).

    A step along b's gradient must then lower a's loss (Z_{b->a} > 0) or raise it (Z_{b->a} < 0),
    while a step on a's own gradient always lowers its own loss.
    """
    tok = load_tokenizer(tiny_bert)
    device = torch.device("cpu")
    model = TaskModel(load_encoder(tiny_bert), {"a": 2, "b": 2}, seed=0)
    with torch.no_grad():
        model.heads["b"].weight.copy_(model.heads["a"].weight)
        model.heads["b"].bias.copy_(model.heads["a"].bias)
    ids, mask = collate(tokenize(tok, TEXTS[:16], 32), pad_id_of(tok), device)
    y = torch.tensor([0, 1] * 8)
    batches = [(ids, mask, y), (ids, mask, y)]
    params = [p for block in encoder_blocks(model.encoder, 2) for _, p in block]
    loss = nn.functional.cross_entropy(model(ids, mask, "a"), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    g_a = torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )
    optimizer = torch.optim.AdamW(params, lr=1e-3)  # only its learning rate is read
    z = _lookahead(
        model,
        ["a", "b"],
        batches,
        torch.stack([g_a, sign * g_a]),
        params,
        optimizer,
        {"a": nn.CrossEntropyLoss(), "b": nn.CrossEntropyLoss()},
        device,
    )
    assert z[0, 0] > 0 and z[0, 1] > 0  # a's step lowers a's loss (and b's, the same loss)
    assert (z[1, 0] > 0) == expect_positive
    assert (z[1, 1] > 0) == expect_positive
    assert abs(z[1, 0]) == pytest.approx(abs(z[0, 0]), rel=0.2)  # first order: opposite steps


def test_alignment_of_identical_tasks_is_high(tiny_bert: Path) -> None:
    tok = load_tokenizer(tiny_bert)
    labels = [0, 1, 0, 1, 1, 0, 1, 0] * 4
    tasks = {"a": _task(tok, labels), "b": _task(tok, labels)}
    result = gradient_alignment(
        load_encoder(tiny_bert),
        tasks,
        TrainingConfig(lr=1e-3, batch_size=8, seed=0),
        AnalysisConfig(align_steps=5, align_every=2, align_batch_size=32, device="cpu"),
        torch.device("cpu"),
        pad_id=pad_id_of(tok),
    )
    assert result.samples == 2
    # Same texts (a batch holds all 32), same labels, heads fitted alike: nearly the same gradient.
    assert result.cos_whole[0, 1] > 0.9
    assert result.conflict_rate[0, 1] == 0.0
    assert result.cos_per_layer.shape == (2, 2, 3)
    assert result.tag[0, 1] > 0


def test_shared_minibatches_give_tasks_of_one_dataset_the_same_texts() -> None:
    from models.gradients import shared_minibatches

    def task(rows: list[int], dataset: str = "d") -> TokenizedTask:
        n = len(rows)
        return TokenizedTask(
            [[1]] * n,
            np.zeros(n, dtype=np.int64),
            [[1]],
            np.zeros(1, np.int64),
            2,
            dataset=dataset,
            train_rows=np.asarray(rows),
        )

    tasks = {
        "a": task(list(range(100))),
        "b": task(list(range(0, 100, 2))),  # labelled on half the rows
        "c": task(list(range(100)), dataset="other"),
        "d": task(list(range(100))),  # labelled on the same rows as a
    }
    picks = shared_minibatches(tasks, 10, np.random.default_rng(0))
    rows = {name: tasks[name].train_rows[idx] for name, idx in picks.items()}  # type: ignore[index]
    assert all(len(r) == 10 for r in rows.values())
    assert (rows["a"] == rows["d"]).all()  # same rows labelled: the very same texts
    # Any labelled row of b that a drew ranks among b's best too, so b drew it as well.
    assert {r for r in rows["a"] if r % 2 == 0} <= set(rows["b"])
    again = shared_minibatches(tasks, 10, np.random.default_rng(0))
    assert all((again[n] == picks[n]).all() for n in picks)


def test_class_weights_reach_training_and_the_alignment(tiny_bert: Path) -> None:
    """Balanced weights change what is trained and what stage 3 measures on imbalanced labels
    (and change nothing on balanced ones, where every weight is 1)."""
    tok = load_tokenizer(tiny_bert)
    skewed = [0] * 28 + [1] * 4
    even = [0, 1] * 16
    cpu = torch.device("cpu")

    def trained_head(labels: list[int], weights: str) -> torch.Tensor:
        model = TaskModel(load_encoder(tiny_bert), {"t": 2}, seed=0)
        cfg = TrainingConfig(epochs=1, lr=1e-3, batch_size=8, class_weights=weights)  # type: ignore[arg-type]
        fit(model, {"t": _task(tok, labels)}, cfg, cpu, pad_id=pad_id_of(tok), seed=0)
        return model.heads["t"].weight.detach().clone()

    assert not torch.allclose(trained_head(skewed, "none"), trained_head(skewed, "balanced"))
    assert torch.allclose(trained_head(even, "none"), trained_head(even, "balanced"))

    def alignment(weights: str) -> np.ndarray:
        tasks = {"a": _task(tok, skewed), "b": _task(tok, even)}
        return gradient_alignment(
            load_encoder(tiny_bert),
            tasks,
            TrainingConfig(lr=1e-3, batch_size=8, seed=0, class_weights=weights),  # type: ignore[arg-type]
            AnalysisConfig(align_steps=5, align_every=2, align_batch_size=32, device="cpu"),
            cpu,
            pad_id=pad_id_of(tok),
        ).cos_whole

    assert not np.allclose(alignment("none"), alignment("balanced"))
