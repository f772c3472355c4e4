"""Benchmark: batched layer-wise pairwise CKA vs a Python loop of ``linear_cka``.

Usage::

    .venv/bin/python bench/bench_cka.py [--t 8] [--n 1024] [--d 384] [--layers 7] [--repeats 5]
        [--batch-size B] [--biased] [--threads N] [--out bench/out/cka.json]

The representations are random but structured like fine-tuned models of one backbone: every layer
has a shared base representation, each model adds its own perturbation (growing with depth, as
fine-tuning changes later layers more), and models in the same "task family" share an extra
component, so CKA values spread over a realistic range instead of all being ~0 or ~1.

Baseline: ``linear_cka`` over every pair (k < l) of every layer in a Python loop. Candidate:
``layerwise_pairwise_cka`` (all pairs and layers batched). With ``--batch-size`` the minibatch
estimator (Nguyen et al. 2021) is also timed; it is a different estimator, so its deviation from
the full-data result is reported but not checked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model

from models.similarity import layerwise_pairwise_cka, linear_cka

TOLERANCE = 1e-6


def make_reps(t: int, layers: int, n: int, d: int, seed: int) -> torch.Tensor:
    """Correlated float32 representations ``(T, L1, n, d)``."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(layers, n, d, generator=gen)
    n_families = max(1, t // 3)
    family = torch.randn(n_families, layers, n, d, generator=gen)
    depth = torch.linspace(0.1, 1.0, layers).view(layers, 1, 1)
    reps = torch.empty(t, layers, n, d)
    for k in range(t):
        own = torch.randn(layers, n, d, generator=gen)
        mix = torch.linalg.qr(torch.randn(d, d, generator=gen)).Q  # a per-model rotation
        reps[k] = (base + depth * (0.7 * family[k % n_families] + 0.5 * own)) @ mix
    return reps


def loop_baseline(reps: torch.Tensor, debiased: bool) -> torch.Tensor:
    t, layers = reps.shape[:2]
    out = torch.ones(layers, t, t, dtype=torch.float64)
    for layer in range(layers):
        for i in range(t):
            for j in range(i + 1, t):
                v = linear_cka(reps[i, layer], reps[j, layer], debiased=debiased)
                out[layer, i, j] = out[layer, j, i] = v
    return out


def time_interleaved(
    fns: dict[str, Callable[[], torch.Tensor]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Time each function ``repeats`` times, interleaved (A B C A B C ...) so that load from
    other processes on a shared machine affects all of them alike. One untimed warm-up each."""
    results = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return times, results


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", type=int, default=8, help="number of models")
    parser.add_argument("--n", type=int, default=1024, help="number of inputs")
    parser.add_argument("--d", type=int, default=384, help="representation width")
    parser.add_argument("--layers", type=int, default=7, help="layers per model (L + 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None, help="also time minibatch CKA")
    parser.add_argument("--biased", action="store_true", help="biased instead of debiased HSIC")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/cka.json"))
    args = parser.parse_args(argv)
    debiased = not args.biased
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    reps = make_reps(args.t, args.layers, args.n, args.d, args.seed)
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "baseline": lambda: loop_baseline(reps, debiased),
        "candidate": lambda: layerwise_pairwise_cka(reps, debiased=debiased),
    }
    if args.batch_size is not None:
        fns["minibatch"] = lambda: layerwise_pairwise_cka(
            reps, debiased=debiased, batch_size=args.batch_size
        )
    load_before = os.getloadavg()[0]
    times, outs = time_interleaved(fns, args.repeats)
    load_after = os.getloadavg()[0]
    base_times, cand_times = times["baseline"], times["candidate"]
    base, cand = outs["baseline"], outs["candidate"]
    max_diff = float((base - cand).abs().max())
    off_diag = cand[:, ~torch.eye(args.t, dtype=torch.bool)]

    rows = {
        "baseline (loop of linear_cka)": summary(base_times),
        "candidate (layerwise_pairwise_cka)": summary(cand_times),
    }
    result: dict[str, object] = {
        "config": {
            "t": args.t,
            "n": args.n,
            "d": args.d,
            "layers": args.layers,
            "repeats": args.repeats,
            "debiased": debiased,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "input_dtype": str(reps.dtype),
        },
        "machine": {
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": "cpu",
            "loadavg_1min_before_after": [load_before, load_after],
        },
        "baseline": {**summary(base_times), "times_s": base_times},
        "candidate": {**summary(cand_times), "times_s": cand_times},
        "speed_ratio": statistics.median(base_times) / statistics.median(cand_times),
        "speed_ratio_of_minima": min(base_times) / min(cand_times),
        "max_abs_diff": max_diff,
        "tolerance": TOLERANCE,
        "cka_offdiag_range": [float(off_diag.min()), float(off_diag.max())],
    }
    if args.batch_size is not None:
        mb_times = times["minibatch"]
        rows[f"minibatch (batch_size={args.batch_size})"] = summary(mb_times)
        result["minibatch"] = {
            **summary(mb_times),
            "times_s": mb_times,
            "speed_ratio": statistics.median(base_times) / statistics.median(mb_times),
            "max_abs_diff_vs_full": float((outs["minibatch"] - cand).abs().max()),
        }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    machine = result["machine"]
    assert isinstance(machine, dict)
    print(
        f"linear CKA ({'debiased' if debiased else 'biased'}), T={args.t} models x "
        f"{args.layers} layers, n={args.n}, d={args.d}, float32 input, "
        f"{args.t * (args.t - 1) // 2 * args.layers} pair-layers, {args.repeats} repeats"
    )
    print(
        f"machine: {machine['cores']} cores ({machine['torch_threads']} torch threads), "
        f"{machine['cpu']}, torch {machine['torch']}, device cpu, "
        f"1-min load average {load_before:.2f} -> {load_after:.2f} (shared machine)"
    )
    print(f"{'':38s} {'median s':>10s} {'min s':>10s} {'max s':>10s}")
    for name, s in rows.items():
        print(f"{name:38s} {s['median_s']:10.4f} {s['min_s']:10.4f} {s['max_s']:10.4f}")
    print(
        f"speed ratio (baseline median / candidate median): {result['speed_ratio']:.2f}x "
        f"(ratio of minima {result['speed_ratio_of_minima']:.2f}x)"
    )
    if "minibatch" in result:
        mbr = result["minibatch"]
        assert isinstance(mbr, dict)
        print(
            f"minibatch: ratio vs baseline {mbr['speed_ratio']:.2f}x, "
            f"max |minibatch - full| = {mbr['max_abs_diff_vs_full']:.2e} (different estimator)"
        )
    ok = max_diff <= TOLERANCE
    print(
        f"max |baseline - candidate| = {max_diff:.2e} (tolerance {TOLERANCE:.0e}: "
        f"{'OK' if ok else 'FAIL'}); JSON: {args.out}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
