"""Stage 3: gradient alignment and TAG lookahead affinity during a short joint warm-up.

Random heads make gradients meaningless, so the gradients are measured at shared parameter points of
a short joint warm-up: from the pretrained encoder, the task heads are first fitted on frozen
features, then S joint steps train encoder and heads on the summed task losses. Every m steps, for
each task i and its minibatch, g_i^l is the gradient of task i's loss with respect to encoder
block l
(block 0 = embeddings, block l = transformer layer l). Per pair: the cosine per block and over the
whole encoder, averaged over samples, and the conflict rate (share of samples with whole-encoder
cosine < 0).

From the same samples, TAG's lookahead affinity (Fifty et al. 2021):
Z_{i->j} = 1 - L_j(theta - u_i) / L_j(theta), on task j's same batch, moving the shared encoder
only.
The lookahead is TAG's plain step theta - eta g_i with eta the warm-up's learning rate, g_i clipped
to norm 1 as every training step here is (unclipped, a step on a freshly fitted head overshoots and
even a task's own loss rises); its losses are
read in full precision (no autocast), because at fine-tuning learning rates the change is small: a
first-order reading, Z_{i->j} ~ eta <g_i, g_j> / L_j, positive when task i's step helps task j.
(Steps sized like Adam's, lr x sign(g_i), were tried and rejected: at the same learning rate they
raise even a task's own loss, so every affinity comes out negative.)

Memory: the T per-task gradients of the encoder are kept at once, O(T x parameters).
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.device import autocast
from models.options import AnalysisConfig, TrainingConfig
from models.training import (
    CancelCheck,
    StepCallback,
    TaskModel,
    TokenizedTask,
    check_cancel,
    collate,
    model_config,
    task_loss_fns,
)

_MAX_GRAD_NORM = 1.0  # the training recipe's gradient clipping, also applied to lookahead steps
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


@dataclass
class AlignmentResult:
    tasks: list[str]
    cos_per_layer: np.ndarray  # (T, T, L+1): mean cosine per encoder block
    cos_whole: np.ndarray  # (T, T): mean whole-encoder cosine
    conflict_rate: np.ndarray  # (T, T): share of samples with whole-encoder cosine < 0
    tag: np.ndarray  # (T, T): Z[i, j] = lookahead affinity of task i onto task j
    samples: int
    steps: int
    seconds: float


def encoder_blocks(encoder: nn.Module, n_layers: int) -> list[list[tuple[str, nn.Parameter]]]:
    """Encoder parameters by block: 0 = embeddings, l = transformer layer l, last = the rest.

    The pooler is left out: mean pooling never uses it, so it has no gradient. The final entry holds
    parameters outside the embeddings and the numbered layers (e.g. a final norm); they count in the
    whole-encoder cosine but belong to no block.
    """
    blocks: list[list[tuple[str, nn.Parameter]]] = [[] for _ in range(n_layers + 2)]
    for name, param in encoder.named_parameters():
        if not param.requires_grad or name.startswith("pooler."):
            continue
        match = _LAYER.search(name)
        if match and int(match.group(1)) < n_layers:
            blocks[int(match.group(1)) + 1].append((name, param))
        elif "embed" in name:
            blocks[0].append((name, param))
        else:
            blocks[-1].append((name, param))
    return blocks


def block_cosines(
    grads: torch.Tensor, bounds: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines between task gradients, per block and over the whole vector.

    ``grads`` is (T, P): each row one task's flattened gradient; ``bounds`` the [start, end)
    slice of each block. Returns (per_block (B, T, T), whole (T, T)), float64. A zero gradient
    has cosine 0.
    """
    g = grads.double()
    dots = torch.stack([g[:, s:e] @ g[:, s:e].T for s, e in bounds])
    whole_dot = g @ g.T

    def cos(d: torch.Tensor) -> torch.Tensor:
        norms = torch.diagonal(d, dim1=-2, dim2=-1).clamp(min=0).sqrt()
        denom = norms.unsqueeze(-1) * norms.unsqueeze(-2)
        return torch.where(denom > 0, d / denom.clamp(min=1e-300), torch.zeros_like(d))

    return cos(dots), cos(whole_dot)


def shared_minibatches(
    tasks: Mapping[str, TokenizedTask], batch_size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One minibatch per task, drawn so that tasks of one dataset share their texts.

    Each dataset's rows get one random priority per step; each task takes its labelled training
    rows of highest priority. Tasks labelled on the same rows thus see the same texts, so their
    gradients differ by what the tasks ask of the encoder, not by which texts were drawn (TAG's
    "same batch"). Tasks without row positions draw on their own.
    """

    def rows_of(task: TokenizedTask) -> np.ndarray | None:
        rows = task.train_rows
        return rows if rows is not None and len(rows) == len(task.train_ids) else None

    extent: dict[str, int] = {}
    for task in tasks.values():
        rows = rows_of(task)
        if rows is not None:
            extent[task.dataset] = max(extent.get(task.dataset, 0), int(rows.max()) + 1)
    priority = {dataset: rng.random(n) for dataset, n in extent.items()}
    picks: dict[str, np.ndarray] = {}
    for name, task in tasks.items():
        size = min(batch_size, len(task.train_ids))
        rows = rows_of(task)
        if rows is None:
            picks[name] = rng.choice(len(task.train_ids), size=size, replace=False)
        else:
            picks[name] = np.argsort(-priority[task.dataset][rows], kind="stable")[:size]
    return picks


def auto_align_steps(tasks: Mapping[str, TokenizedTask], batch_size: int) -> int:
    """A tenth of an epoch of the largest task, kept within 12..48 joint steps."""
    largest = max(len(t.train_ids) for t in tasks.values())
    return int(min(48, max(12, math.ceil(0.1 * largest / batch_size))))


@torch.no_grad()
def fit_heads(
    model: TaskModel,
    tasks: Mapping[str, TokenizedTask],
    device: torch.device,
    *,
    pad_id: int,
    n_examples: int,
    rng: np.random.Generator,
    iters: int = 200,
    loss_fns: Mapping[str, nn.CrossEntropyLoss] | None = None,
) -> None:
    """Fit each task's linear head on frozen pooled features (multinomial logistic regression),
    with the task's class weights when ``loss_fns`` carries them."""
    model.eval()
    for name, task in tasks.items():
        take = rng.permutation(len(task.train_ids))[:n_examples]
        feats = []
        for start in range(0, len(take), 64):
            idx = take[start : start + 64]
            ids, mask = collate([task.train_ids[i] for i in idx], pad_id, device)
            with autocast(device):
                feats.append(model.pooled(ids, mask).float())
        x = torch.cat(feats)
        y = torch.as_tensor(task.train_labels[take], dtype=torch.long, device=device)
        head = model.heads[name]
        assert isinstance(head, nn.Linear)
        weight = None if loss_fns is None else loss_fns[name].weight
        with torch.enable_grad():
            opt = torch.optim.Adam(head.parameters(), lr=1e-2)
            for _ in range(iters):
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(head(x), y, weight=weight)
                loss = loss + 1e-4 * head.weight.pow(2).sum()
                loss.backward()
                opt.step()


def gradient_alignment(
    pretrained: nn.Module,
    tasks: Mapping[str, TokenizedTask],
    cfg: TrainingConfig,
    analysis: AnalysisConfig,
    device: torch.device,
    *,
    pad_id: int,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> AlignmentResult:
    start = time.perf_counter()
    names = list(tasks)
    n_tasks = len(names)
    rng = np.random.default_rng(cfg.seed + 7919)
    torch.manual_seed(cfg.seed)
    n_layers = int(model_config(pretrained).num_hidden_layers)
    model = TaskModel(
        copy.deepcopy(pretrained), {n: t.n_classes for n, t in tasks.items()}, seed=cfg.seed
    ).to(device)
    batch_size = analysis.align_batch_size or min(cfg.batch_size, 16)
    steps = analysis.align_steps or auto_align_steps(tasks, batch_size)
    every = max(1, analysis.align_every)
    loss_fns = task_loss_fns(tasks, cfg, device)
    fit_heads(
        model,
        tasks,
        device,
        pad_id=pad_id,
        n_examples=analysis.head_fit_examples,
        rng=rng,
        loss_fns=loss_fns,
    )

    blocks = encoder_blocks(model.encoder, n_layers)
    params = [p for block in blocks for _, p in block]
    bounds: list[tuple[int, int]] = []
    offset = 0
    for block in blocks[:-1]:
        size = sum(p.numel() for _, p in block)
        bounds.append((offset, offset + size))
        offset += size
    total = offset + sum(p.numel() for _, p in blocks[-1])
    grads = torch.zeros((n_tasks, total), dtype=torch.float32, device=device)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    per_layer: list[np.ndarray] = []
    whole: list[np.ndarray] = []
    tags: list[np.ndarray] = []
    for step in range(steps):
        check_cancel(should_cancel)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        batches = []
        picks = shared_minibatches(tasks, batch_size, rng)
        for i, name in enumerate(names):
            task = tasks[name]
            idx = picks[name]
            ids, mask = collate([task.train_ids[k] for k in idx], pad_id, device)
            labels = torch.as_tensor(task.train_labels[idx], dtype=torch.long, device=device)
            batches.append((ids, mask, labels))
            for p in params:
                p.grad = None
            with autocast(device):
                logits = model(ids, mask, name)
            loss_fns[name](logits.float(), labels).backward()
            torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                    for p in params
                ],
                out=grads[i],
            )
        sample = step > 0 and step % every == 0
        if sample:
            cos_blocks, cos_whole = block_cosines(grads, bounds)
            per_layer.append(cos_blocks.permute(1, 2, 0).cpu().numpy())
            whole.append(cos_whole.cpu().numpy())
            tags.append(
                _lookahead(model, names, batches, grads, params, optimizer, loss_fns, device)
            )
        # The joint step: the encoder follows the summed task gradients; each head got its own.
        summed = grads.sum(0)
        pos = 0
        for p in params:
            n = p.numel()
            p.grad = summed[pos : pos + n].view_as(p).to(p.dtype)
            pos += n
        torch.nn.utils.clip_grad_norm_(model.parameters(), _MAX_GRAD_NORM)
        optimizer.step()
        if on_step is not None:
            on_step(step + 1, steps)
    if not whole:
        raise RuntimeError(
            "gradient alignment took no samples: align_steps must exceed align_every"
        )
    cos_w = np.stack(whole)
    return AlignmentResult(
        tasks=names,
        cos_per_layer=np.mean(per_layer, axis=0),
        cos_whole=cos_w.mean(0),
        conflict_rate=(cos_w < 0).mean(0),
        tag=np.mean(tags, axis=0),
        samples=len(whole),
        steps=steps,
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def _lookahead(
    model: TaskModel,
    names: Sequence[str],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    grads: torch.Tensor,
    params: Sequence[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    loss_fns: Mapping[str, nn.CrossEntropyLoss],
    device: torch.device,
) -> np.ndarray:
    """Z[i, j] = 1 - L_j(theta - u_i) / L_j(theta), on the shared encoder only, same batches."""
    model.eval()  # no dropout: both losses of the ratio are read the same way

    def losses() -> torch.Tensor:
        out = []
        for name, (ids, mask, labels) in zip(names, batches, strict=True):
            weight = loss_fns[name].weight
            out.append(
                nn.functional.cross_entropy(
                    model(ids, mask, name).double(),
                    labels,
                    weight=None if weight is None else weight.double(),
                )
            )
        return torch.stack(out)

    lr = optimizer.param_groups[0]["lr"]
    theta = torch.cat([p.detach().reshape(-1).float() for p in params])
    base = losses()
    z = np.zeros((len(names), len(names)))
    for i in range(len(names)):
        norm = float(grads[i].norm())
        moved = theta - (lr * min(1.0, _MAX_GRAD_NORM / max(norm, 1e-12))) * grads[i]
        _assign(params, moved)
        z[i] = (1.0 - losses() / base.clamp(min=1e-12)).cpu().numpy()
    _assign(params, theta)
    return z


def _assign(params: Sequence[nn.Parameter], flat: torch.Tensor) -> None:
    pos = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[pos : pos + n].view_as(p))
        pos += n
