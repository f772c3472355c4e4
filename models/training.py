"""The training recipe shared by every model the service trains (STL, joint warm-up, MTL).

An encoder from the job's base model, mean-pooled over non-padding tokens of its last layer, and one
linear head per task. Cross-entropy, AdamW, linear warm-up and decay, dynamic padding with
length-grouped batches; texts are tokenized once per job, never again per epoch; evaluation and
probe reads run in inference mode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from models.device import autocast
from models.options import TrainingConfig

StepCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


class JobCancelled(Exception):
    """Raised between steps when the job's cancellation check says stop."""


def check_cancel(should_cancel: CancelCheck | None) -> None:
    if should_cancel is not None and should_cancel():
        raise JobCancelled("the job was cancelled")


@dataclass
class TokenizedTask:
    """A task's texts as token ids (unpadded) and class indices, for both splits."""

    train_ids: list[list[int]]
    train_labels: np.ndarray
    val_ids: list[list[int]]
    val_labels: np.ndarray
    n_classes: int
    # Where each training example sits in its dataset (dataset name, row positions): tasks of one
    # dataset can then be read on the same texts (stage 3 draws shared minibatches).
    dataset: str = ""
    train_rows: np.ndarray | None = None


def tokenize(tokenizer: object, texts: Sequence[str], max_length: int) -> list[list[int]]:
    encoded = tokenizer(  # type: ignore[operator]
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return [list(ids) for ids in encoded["input_ids"]]


def collate(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence of this batch only (dynamic padding)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, *, mega: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: sort within mega-batches, then shuffle batch order.

    Padding waste drops to a few percent while every epoch still sees a fresh random order.
    """
    order = rng.permutation(len(lengths))
    lens = np.asarray(lengths)
    batches: list[np.ndarray] = []
    span = batch_size * mega
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(-lens[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def class_weights(task: TokenizedTask, cfg: TrainingConfig) -> np.ndarray | None:
    """The per-class weights of ``task``'s cross-entropy under ``cfg.class_weights``: None for
    "none"; for "balanced", ``n / (K * n_k)`` over the training split (a class absent from it, which
    no training example can carry, gets weight 0)."""
    if cfg.class_weights == "none":
        return None
    counts = np.bincount(task.train_labels, minlength=task.n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(task.n_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def task_loss_fns(
    tasks: Mapping[str, TokenizedTask], cfg: TrainingConfig, device: torch.device
) -> dict[str, nn.CrossEntropyLoss]:
    """One cross-entropy per task, weighted as ``cfg.class_weights`` says (``class_weights``)."""
    out = {}
    for name, task in tasks.items():
        w = class_weights(task, cfg)
        weight = None if w is None else torch.as_tensor(w, dtype=torch.float32, device=device)
        out[name] = nn.CrossEntropyLoss(weight=weight)
    return out


def chance_baseline(task: TokenizedTask) -> dict[str, Any]:
    """The floor a fine-tuned model must clear to have learnt ``task``: the best validation
    macro-F1 of three predictors that ignore the text. ``majority_macro_f1``: always the training
    split's most frequent class (``class_index``). ``prior_macro_f1`` and ``uniform_macro_f1``: the
    expected macro-F1 of guessing at random with the training class shares, or uniformly (class k
    then scores F1 = 2 q_k p_k / (q_k + p_k), q_k its validation share and p_k its guessing
    rate). The guessing floors matter under class-balanced losses, where a model that learnt
    nothing spreads its predictions over the classes instead of repeating the majority.
    ``macro_f1`` is the largest of the three; ``accuracy`` is the majority predictor's."""
    counts = np.bincount(task.train_labels, minlength=task.n_classes).astype(np.float64)
    majority = int(counts.argmax())
    preds = np.full(len(task.val_labels), majority, dtype=np.int64)
    fixed = scores(task.val_labels, preds, task.n_classes)
    q = np.bincount(task.val_labels, minlength=task.n_classes) / max(1, len(task.val_labels))

    def guessing(p: np.ndarray) -> float:
        both = q + p
        f1 = np.divide(2 * q * p, both, out=np.zeros_like(both), where=both > 0)
        return float(f1.mean())

    prior = guessing(counts / counts.sum())
    uniform = guessing(np.full(task.n_classes, 1.0 / task.n_classes))
    return {
        "class_index": majority,
        "macro_f1": max(fixed["macro_f1"], prior, uniform),
        "accuracy": fixed["accuracy"],
        "majority_macro_f1": fixed["macro_f1"],
        "prior_macro_f1": prior,
        "uniform_macro_f1": uniform,
    }


def steps_per_task(n_train: int, cfg: TrainingConfig) -> int:
    """Training steps of one task's single-task fine-tune: epochs over its data, capped."""
    steps = cfg.epochs * math.ceil(n_train / cfg.batch_size)
    if cfg.step_fraction < 1.0:
        steps = max(1, math.ceil(cfg.step_fraction * steps))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def build_schedule(
    tasks: Mapping[str, TokenizedTask], cfg: TrainingConfig, rng: np.random.Generator
) -> list[tuple[str, np.ndarray]]:
    """(task, batch) pairs: each task gets exactly its single-task steps, interleaved at random.

    With several tasks this samples tasks in proportion to their data and gives each task the same
    epochs over its data as its single-task model had: the MTL loss is the sum of the task losses,
    optimised stochastically one task batch per step.
    """
    schedule: list[tuple[str, np.ndarray]] = []
    for name, task in tasks.items():
        budget = steps_per_task(len(task.train_ids), cfg)
        lengths = [len(s) for s in task.train_ids]
        batches: list[np.ndarray] = []
        while len(batches) < budget:
            batches.extend(length_grouped_batches(lengths, cfg.batch_size, rng))
        schedule.extend((name, b) for b in batches[:budget])
    if len(tasks) > 1:
        schedule = [schedule[i] for i in rng.permutation(len(schedule))]
    return schedule


def model_config(encoder: nn.Module) -> Any:
    """The transformers config an encoder carries (layer count, hidden size)."""
    return encoder.config


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TaskModel(nn.Module):
    """A shared encoder with one linear head per task on its mean-pooled last layer."""

    def __init__(self, encoder: nn.Module, n_classes: Mapping[str, int], *, seed: int) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(model_config(encoder).hidden_size)
        gen = torch.Generator().manual_seed(seed)
        self.heads = nn.ModuleDict()
        for name, k in n_classes.items():
            head = nn.Linear(hidden, k)
            bound = 1.0 / math.sqrt(hidden)
            with torch.no_grad():
                head.weight.uniform_(-bound, bound, generator=gen)
                head.bias.zero_()
            self.heads[name] = head

    def pooled(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=ids, attention_mask=mask)
        return mean_pool(out.last_hidden_state, mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, task: str) -> torch.Tensor:
        return self.heads[task](self.pooled(ids, mask)).float()


def pad_id_of(tokenizer: object) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


@dataclass
class FitResult:
    steps: int
    seconds: float
    loss_curve: list[float] = field(default_factory=list)  # mean loss per logged window
    examples: int = 0


def fit(
    model: TaskModel,
    tasks: Mapping[str, TokenizedTask],
    cfg: TrainingConfig,
    device: torch.device,
    *,
    pad_id: int,
    seed: int,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    log_every: int = 10,
) -> FitResult:
    """Train ``model`` on the (task, batch) schedule; checks for cancellation between steps."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    schedule = build_schedule(tasks, cfg, rng)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "norm" in name else decay).append(
            param
        )
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        fused=device.type == "cuda",
    )
    total = len(schedule)
    warmup = int(cfg.warmup_ratio * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    loss_fns = task_loss_fns(tasks, cfg, device)
    model.train()
    start = time.perf_counter()
    window: list[torch.Tensor] = []
    curve: list[float] = []
    examples = 0
    for step, (name, batch) in enumerate(schedule):
        check_cancel(should_cancel)
        task = tasks[name]
        ids, mask = collate([task.train_ids[i] for i in batch], pad_id, device)
        labels = torch.as_tensor(task.train_labels[batch], dtype=torch.long, device=device)
        with autocast(device):
            logits = model(ids, mask, name)
        loss = loss_fns[name](logits.float(), labels)  # fp32 loss (the weights are fp32)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        examples += len(batch)
        window.append(loss.detach())
        if len(window) == log_every or step == total - 1:
            curve.append(float(torch.stack(window).mean()))
            window = []
        if on_step is not None:
            on_step(step + 1, total)
    model.eval()
    return FitResult(
        steps=total, seconds=time.perf_counter() - start, loss_curve=curve, examples=examples
    )


def _sorted_batches(seqs: Sequence[Sequence[int]], batch_size: int) -> list[np.ndarray]:
    order = np.argsort([-len(s) for s in seqs], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def predict(
    model: TaskModel,
    task_name: str,
    seqs: Sequence[Sequence[int]],
    device: torch.device,
    *,
    pad_id: int,
    batch_size: int = 64,
) -> np.ndarray:
    model.eval()
    preds = np.empty(len(seqs), dtype=np.int64)
    for batch in _sorted_batches(seqs, batch_size):
        ids, mask = collate([seqs[i] for i in batch], pad_id, device)
        with autocast(device):
            logits = model(ids, mask, task_name)
        preds[batch] = logits.argmax(-1).cpu().numpy()
    return preds


def scores(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> dict[str, float]:
    """Macro-F1 over all of the task's classes (a class never predicted scores 0) and accuracy."""
    return {
        "macro_f1": float(
            f1_score(labels, preds, labels=list(range(n_classes)), average="macro", zero_division=0)
        ),
        "accuracy": float(accuracy_score(labels, preds)),
    }


@torch.inference_mode()
def layer_representations(
    encoder: nn.Module,
    seqs: Sequence[Sequence[int]],
    device: torch.device,
    *,
    pad_id: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """Mean-pooled hidden states of every layer (0 = embeddings) on the probe set: (L+1, n, d)."""
    encoder.eval()
    chunks: list[tuple[np.ndarray, torch.Tensor]] = []
    for batch in _sorted_batches(seqs, batch_size):
        ids, mask = collate([seqs[i] for i in batch], pad_id, device)
        with autocast(device):
            out = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        pooled = torch.stack([mean_pool(h.float(), mask) for h in out.hidden_states])
        chunks.append((batch, pooled.cpu()))
    n_layers, _, dim = chunks[0][1].shape
    reps = torch.empty((n_layers, len(seqs), dim), dtype=torch.float32)
    for batch, pooled in chunks:
        reps[:, torch.as_tensor(batch)] = pooled
    return reps
