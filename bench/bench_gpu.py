"""Benchmark: the hot paths on a CUDA GPU (fine-tuning, layer-wise CKA, gradient alignment).

Usage::

    .venv/bin/python bench/bench_gpu.py [--steps 50] [--warmup 5] [--repeats 3] [--n 2048]
        [--out bench/out/gpu.json]
    .venv/bin/python bench/bench_gpu.py --allow-cpu     # a tiny smoke version on the CPU

Runs unchanged on any machine with a CUDA device, through the same code the service uses
(``models.device.resolve_device``: bf16 autocast and TF32 matmuls on CUDA):

* fine-tuning throughput: our stage-1 recipe (:func:`models.training.fit`, MiniLM-L6 + mean pool +
  linear head, openintro/birds remarks, label ``phase_of_flt``), examples/s over ``--steps`` steps
  after ``--warmup`` untimed ones, median over ``--repeats`` runs; FLOP/s counted as in
  ``bench_train.py`` against the device's measured matmul peak (fp32 with TF32 allowed, and bf16);
* analysis: ``layerwise_pairwise_cka`` for T = 8 models x 7 layers x n inputs x d = 384 (float64
  on the device), against a per-pair loop of ``linear_cka`` and one of the textbook float64
  reference (``bench_cka.reference_cka``) on the same device, and stage 3's
  ``gradient_alignment`` on a small 3-task birds job;
* peak memory of each part (``torch.cuda.max_memory_allocated``) and the device's name.

The Trainer comparison on a GPU is ``bench_train.py --device cuda`` (the Trainer then gets
``bf16=True``, as our recipe autocasts). Without a CUDA device this prints a message and exits 0,
unless ``--allow-cpu`` is given: then every part runs once on the CPU at toy sizes, to check that
the script works; those figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_cka import loop_baseline, make_reps, reference_loop
from bench_train import (
    build_setup,
    describe_run,
    device_name,
    encoder_shape,
    load_birds,
    matmul_peak,
    model_dir,
    run_ours,
)
from machine import cpu_model

from models.gradients import gradient_alignment
from models.options import AnalysisConfig, TrainingConfig
from models.registry import load_encoder, load_tokenizer
from models.similarity import layerwise_pairwise_cka
from models.training import TokenizedTask, pad_id_of, tokenize

ALIGN_TASKS = ("phase_of_flt", "time_of_day", "birds_struck")


@dataclass(frozen=True)
class Sizes:
    """How big each part is: the GPU defaults, or toy sizes for the CPU smoke run."""

    steps: int
    warmup: int
    repeats: int
    batch_size: int
    max_length: int
    cka_t: int
    cka_layers: int
    cka_n: int
    cka_d: int
    align_rows: int
    align_steps: int
    head_fit_examples: int


def sizes_for(args: argparse.Namespace, smoke: bool) -> Sizes:
    if smoke:
        return Sizes(2, 1, 1, 8, 32, 4, 3, 128, 32, 48, 3, 16)
    return Sizes(
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        batch_size=args.batch_size,
        max_length=args.max_length,
        cka_t=8,
        cka_layers=7,
        cka_n=args.n,
        cka_d=384,
        align_rows=2000,
        align_steps=24,
        head_fit_examples=512,
    )


# --------------------------------------------------------------------------------------------
# Measuring on the device
# --------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict[str, Any], key: str) -> Iterator[None]:
    """Record the peak allocated device memory (MiB) of the block under ``into[key]``."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        sync(device)
        into[key] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        into[key] = None  # not measured on the CPU


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Seconds per call, ``repeats`` calls after one untimed warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def bf16_peak(device: torch.device, n: int = 4096, repeats: int = 7) -> list[float]:
    """bf16 ``torch.mm`` FLOP/s (the tensor-core peak autocast can reach)."""
    if device.type != "cuda":
        return []
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return [2 * n**3 / t for t in timed(lambda: torch.mm(a, b), device, repeats)]


# --------------------------------------------------------------------------------------------
# The three parts
# --------------------------------------------------------------------------------------------


def bench_finetune(
    sizes: Sizes, args: argparse.Namespace, memory: dict[str, Any]
) -> dict[str, Any]:
    setup = build_setup(
        steps=sizes.steps,
        warmup=sizes.warmup,
        rows=None,
        batch_size=sizes.batch_size,
        max_length=sizes.max_length,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )
    shape = encoder_shape(setup.pretrained)
    runs = []
    with peak_memory(setup.device, memory, "finetune_mib"):
        if setup.device.type == "cuda":
            run_ours(setup)  # untimed: the first run meets every padded shape for the first time
        for _ in range(sizes.repeats):
            runs.append(describe_run(run_ours(setup), sizes.warmup, shape))
    rates = [r["examples_per_s"] for r in runs]
    fp32_peak = statistics.median(matmul_peak(setup.device))
    bf16 = bf16_peak(setup.device)
    hardware = statistics.median(r["hardware_flops_per_s"] for r in runs)
    return {
        "runs": runs,
        "examples_per_s": spread(rates),
        "matmul_peak_fp32_flops_per_s": fp32_peak,
        "matmul_peak_bf16_flops_per_s": statistics.median(bf16) if bf16 else None,
        "hardware_flops_per_s": hardware,
        "fraction_of_fp32_peak": hardware / fp32_peak,
        "fraction_of_bf16_peak": hardware / statistics.median(bf16) if bf16 else None,
    }


def bench_cka(
    sizes: Sizes, device: torch.device, memory: dict[str, Any], repeats: int
) -> dict[str, Any]:
    reps = make_reps(sizes.cka_t, sizes.cka_layers, sizes.cka_n, sizes.cka_d, seed=0).to(device)
    with peak_memory(device, memory, "cka_mib"):
        batched = timed(lambda: layerwise_pairwise_cka(reps), device, repeats)
    loop = timed(lambda: loop_baseline(reps, True), device, max(1, repeats // 2))
    reference = timed(lambda: reference_loop(reps, True), device, max(1, repeats // 2))
    batched_out = layerwise_pairwise_cka(reps)
    diff = float((batched_out - loop_baseline(reps, True)).abs().max())
    ref_diff = float((batched_out - reference_loop(reps, True)).abs().max())
    return {
        "t": sizes.cka_t,
        "layers": sizes.cka_layers,
        "n": sizes.cka_n,
        "d": sizes.cka_d,
        "batched_s": spread(batched),
        "loop_s": spread(loop),
        "speed_ratio": statistics.median(loop) / statistics.median(batched),
        "max_abs_diff": diff,
        "reference_s": spread(reference),
        "speed_ratio_vs_reference": statistics.median(reference) / statistics.median(batched),
        "max_abs_diff_vs_reference": ref_diff,
    }


def bench_job(args: argparse.Namespace, device: torch.device, memory: dict[str, Any]) -> dict:
    """One recommendation end to end (``models.pipeline.run_job``, what a worker runs) on the
    bundled example: 800 tickets, 5 tasks, MiniLM-L6, the planted grouping as a candidate,
    verification on; the stage timings the recommendation itself reports."""
    import pandas as pd

    from models.data import example_path
    from models.options import DatasetSpec, JobSpec, TaskSpec
    from models.pipeline import run_job

    data, planted = example_path()
    frame = pd.read_csv(data)
    names = [t for group in planted for t in group]
    smoke = device.type == "cpu"  # --allow-cpu: 96 rows, 2 steps a model, to check the script
    epochs = 1 if smoke else 3
    spec = JobSpec(
        datasets=[DatasetSpec("tickets", frame.head(96) if smoke else frame, "text")],
        tasks=[TaskSpec(t, "tickets", t) for t in names],
        model_name="minilm-l6",
        model_dir=model_dir(),
        training=TrainingConfig(epochs=epochs, max_length=64, max_steps=2 if smoke else None),
        analysis=AnalysisConfig(
            device="cpu" if smoke else "cuda",
            align_steps=3 if smoke else 24,
            align_every=1 if smoke else 2,
        ),
        candidates=[planted],
        verify=True,
    )
    with peak_memory(device, memory, "job_mib"):
        start = time.perf_counter()
        rec = run_job(spec)
        seconds = time.perf_counter() - start
    same = sorted(map(sorted, rec["grouping"])) == sorted(map(sorted, planted))
    return {
        "rows": len(spec.datasets[0].frame),
        "tasks": names,
        "epochs": epochs,
        "seconds": seconds,
        "timings": rec["timings"],
        "grouping": rec["grouping"],
        "planted": planted,
        "planted_recovered": same,
        "device": rec["settings"].get("device"),
        "verification": [
            {k: v[k] for k in ("tasks", "matches", "predicted", "outcome")}
            for v in rec["verification"] or []
        ],
    }


def alignment_tasks(
    sizes: Sizes, max_length: int, seed: int
) -> tuple[dict[str, TokenizedTask], Any]:
    """The small job of stage 3: three birds labels on the same remarks (shared minibatches)."""
    texts, labels = load_birds(sizes.align_rows, seed, ALIGN_TASKS)
    tokenizer = load_tokenizer(model_dir())
    ids = tokenize(tokenizer, texts, max_length)
    rows = np.arange(len(ids))
    tasks = {
        name: TokenizedTask(
            ids, y, [], np.zeros(0, dtype=np.int64), k, dataset="birds", train_rows=rows
        )
        for name, (y, k) in labels.items()
    }
    return tasks, tokenizer


def bench_alignment(
    sizes: Sizes, args: argparse.Namespace, device: torch.device, memory: dict[str, Any]
) -> dict:
    tasks, tokenizer = alignment_tasks(sizes, sizes.max_length, args.seed)
    pretrained = load_encoder(model_dir())  # gradient_alignment moves its own copy
    cfg = TrainingConfig(lr=args.lr, batch_size=sizes.batch_size, max_length=sizes.max_length)
    analysis = AnalysisConfig(
        align_steps=sizes.align_steps,
        align_every=2 if sizes.align_steps > 2 else 1,
        head_fit_examples=sizes.head_fit_examples,
    )
    with peak_memory(device, memory, "alignment_mib"):
        sync(device)
        start = time.perf_counter()
        result = gradient_alignment(
            pretrained, tasks, cfg, analysis, device, pad_id=pad_id_of(tokenizer)
        )
        sync(device)
        seconds = time.perf_counter() - start
    return {
        "tasks": list(ALIGN_TASKS),
        "rows": sizes.align_rows,
        "steps": result.steps,
        "samples": result.samples,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA: tiny CPU smoke")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--n", type=int, default=2048, help="CKA inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-job", dest="job", action="store_false", help="skip the whole job")
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    has_cuda = torch.cuda.is_available()
    if not has_cuda and not args.allow_cpu:
        print(
            "bench_gpu: no CUDA device on this machine, nothing measured (exit 0). "
            "Run it on a GPU host, or pass --allow-cpu for a tiny smoke run on the CPU."
        )
        return 0
    args.device = "cuda" if has_cuda else "cpu"
    sizes = sizes_for(args, smoke=not has_cuda)
    device = torch.device(args.device)
    memory: dict[str, Any] = {}
    load_before = os.getloadavg()
    finetune = bench_finetune(sizes, args, memory)
    cka = bench_cka(sizes, device, memory, sizes.repeats)
    alignment = bench_alignment(sizes, args, device, memory)
    job: dict[str, Any] | None = None
    if args.job:
        try:
            job = bench_job(args, device, memory)
        except Exception as exc:  # the other parts' figures still count; the error is reported
            job = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"bench_gpu: the job failed: {job['error']}", file=sys.stderr)
    result = {
        "smoke_run_on_cpu": not has_cuda,
        "sizes": vars(sizes),
        "machine": {
            "device": device_name(device),
            "cuda": torch.version.cuda,
            "torch": torch.__version__,
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "platform": platform.platform(),
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
        },
        "finetune": finetune,
        "cka": cka,
        "alignment": alignment,
        "job": job,
        "peak_memory_mib": memory,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    return 0


def mib(value: float | None) -> str:
    return "n/a (cpu)" if value is None else f"{value:.0f} MiB"


def span(s: dict[str, float], digits: int) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def print_report(result: dict[str, Any]) -> None:
    machine, sizes = result["machine"], result["sizes"]
    ft, cka, al = result["finetune"], result["cka"], result["alignment"]
    mem = result["peak_memory_mib"]
    if result["smoke_run_on_cpu"]:
        print("SMOKE RUN ON THE CPU (--allow-cpu): toy sizes, the figures mean nothing")
    print(
        f"device: {machine['device']} (CUDA {machine['cuda']}, torch {machine['torch']}), "
        f"host {machine['cores']} cores {machine['cpu']}; load average "
        f"{machine['loadavg_before'][0]:.2f} -> {machine['loadavg_after'][0]:.2f}"
    )
    bf16 = ft["fraction_of_bf16_peak"]
    cka_label = f"layerwise CKA T={cka['t']} x {cka['layers']} layers, n={cka['n']}, s"
    rows = [
        ("fine-tune, examples/s", span(ft["examples_per_s"], 1), mem.get("finetune_mib")),
        (cka_label, span(cka["batched_s"], 4), mem.get("cka_mib")),
        (
            f"gradient alignment {len(al['tasks'])} tasks, {al['steps']} steps, s",
            f"{al['seconds']:.2f}",
            mem.get("alignment_mib"),
        ),
    ]
    job = result.get("job")
    if job and "error" in job:
        print(f"one job: FAILED: {job['error']}")
        job = None
    if job:
        rows.append(
            (
                f"one job: {len(job['tasks'])} tasks, {job['rows']} rows, verify, s",
                f"{job['seconds']:.1f}",
                mem.get("job_mib"),
            )
        )
    print(f"{'part':46s} {'median (min-max)':>26s} {'peak memory':>12s}")
    for label, value, peak in rows:
        print(f"{label:46s} {value:>26s} {mib(peak):>12s}")
    print(
        f"fine-tune: {sizes['steps']} timed steps after {sizes['warmup']}, batch "
        f"{sizes['batch_size']}, "
        f"max_length {sizes['max_length']}: {ft['hardware_flops_per_s'] / 1e12:.3f} TFLOP/s = "
        f"{100 * ft['fraction_of_fp32_peak']:.1f}% of the fp32 (TF32 allowed) mm peak "
        f"({ft['matmul_peak_fp32_flops_per_s'] / 1e12:.2f} TFLOP/s)"
        + ("" if bf16 is None else f", {100 * bf16:.1f}% of the bf16 mm peak")
    )
    if job:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in job["timings"].items())
        print(
            f"job on {job['device']}: {job['epochs']} epochs; stages (s): {stages}; grouping "
            f"{job['grouping']}; planted recovered: {job['planted_recovered']}; verified: "
            + ", ".join(f"{'+'.join(v['tasks'])} {v['matches']}" for v in job["verification"])
        )
    print(
        f"CKA: per-pair loop of linear_cka {cka['loop_s']['median']:.4f} s on the same device, "
        f"ratio {cka['speed_ratio']:.1f}x, max |loop - batched| {cka['max_abs_diff']:.1e}; "
        f"per-pair loop of the float64 reference {cka['reference_s']['median']:.4f} s, ratio "
        f"{cka['speed_ratio_vs_reference']:.1f}x, max diff {cka['max_abs_diff_vs_reference']:.1e}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
