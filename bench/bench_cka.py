"""Benchmark: batched pairwise / layer-wise CKA vs a Python loop of ``linear_cka``.

Usage::

    .venv/bin/python bench/bench_cka.py [--t 8] [--n 2048] [--d 384] [--layers 7] [--repeats 3]
        [--threads 1,2] [--kernels pairwise,layerwise] [--batch-size B] [--biased]
        [--out bench/out/cka.json]

The representations are random but structured like fine-tuned models of one backbone: every layer
has a shared base representation, each model adds its own perturbation (growing with depth, as
fine-tuning changes later layers more), and models in the same "task family" share an extra
component, so CKA values spread over a realistic range instead of all being ~0 or ~1.

Two kernels, each against two baselines, for every ``--threads`` setting in one run:

* ``pairwise``: ``pairwise_cka`` on layer 0 (``T`` representations) against ``linear_cka`` over
  its ``T (T - 1) / 2`` pairs in a Python loop;
* ``layerwise``: ``layerwise_pairwise_cka`` on all ``--layers`` layers against the loop over
  every pair of every layer.

The baselines: a Python loop of the module's own ``linear_cka`` (which already takes the cheaper
of its two paths for each pair), and the per-pair loop over a float64 reference that
``shared/BENCH.md`` names: METHOD.md's formulas pair by pair, both ``n x n`` Gram matrices in
float64 and the three HSICs from them (``reference_cka``; ``--no-reference`` skips it). Both
must agree with the batched result within 1e-6.

All functions of one thread setting are timed interleaved (A B C D A B C D ...), so that load from
other jobs on a shared machine hits them alike; one untimed warm-up of the single-layer functions
first (the layer-wise ones run the same kernels, so they are not warmed up again). With
``--batch-size`` the minibatch estimator (Nguyen et al. 2021) is also timed; it is a different
estimator, so its deviation from the full-data result is reported but not checked.

The table also gives the ratio of the two sides' GEMM multiply-adds under the module's own cost
model (the ceiling of the speed ratio at equal GEMM efficiency): at n = 2048, d = 384 a pair in the
loop takes the feature-space path (``n (2d)^2`` multiply-adds, four ``d x d`` blocks), while the
8 representations together take the Gram path (``~T n^2 d / 2``, half of each Gram matrix), which
puts the ceiling near 4.8x; at n = 1024 the pair takes the Gram path too and the ceiling is ~6.9x.
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
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model

from models import similarity
from models.similarity import layerwise_pairwise_cka, linear_cka, pairwise_cka

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


def pair_loop(
    reps: torch.Tensor, cka: Callable[[torch.Tensor, torch.Tensor], float]
) -> torch.Tensor:
    """``cka`` over every pair of every layer, one pair at a time: ``(L1, T, T)``."""
    t, layers = reps.shape[:2]
    out = torch.ones(layers, t, t, dtype=torch.float64)
    for layer in range(layers):
        for i in range(t):
            for j in range(i + 1, t):
                out[layer, i, j] = out[layer, j, i] = cka(reps[i, layer], reps[j, layer])
    return out


def loop_baseline(reps: torch.Tensor, debiased: bool) -> torch.Tensor:
    """The module's own ``linear_cka``, pair by pair."""
    return pair_loop(reps, lambda x, y: linear_cka(x, y, debiased=debiased))


def reference_hsic(k: torch.Tensor, l: torch.Tensor, debiased: bool) -> torch.Tensor:  # noqa: E741
    """HSIC of two float64 Gram matrices from METHOD.md's formulas (no n^3 products: the
    centring is done on the matrix, ``tr(KHLH) = <HKH, HLH>``, and ``1'KL1 = (K1)'(L1)``)."""
    n = k.shape[0]
    if not debiased:
        kc = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
        lc = l - l.mean(0, keepdim=True) - l.mean(1, keepdim=True) + l.mean()
        return (kc * lc).sum() / (n - 1) ** 2
    kt = k.clone().fill_diagonal_(0.0)
    lt = l.clone().fill_diagonal_(0.0)
    value = (
        (kt * lt).sum()
        + kt.sum() * lt.sum() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (kt.sum(0) @ lt.sum(1))
    )
    return value / (n * (n - 3))


def reference_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool) -> float:
    """One pair by the textbook: both Gram matrices in float64, then the three HSICs."""
    x, y = x.double(), y.double()
    k, l = x @ x.T, y @ y.T  # noqa: E741
    hk, hl = reference_hsic(k, k, debiased), reference_hsic(l, l, debiased)
    return float(reference_hsic(k, l, debiased) / torch.sqrt(hk * hl))


def reference_loop(reps: torch.Tensor, debiased: bool) -> torch.Tensor:
    """The float64 reference (:func:`reference_cka`), pair by pair."""
    return pair_loop(reps, lambda x, y: reference_cka(x, y, debiased))


def time_interleaved(
    fns: dict[str, Callable[[], torch.Tensor]], repeats: int, warm: set[str]
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Time each function ``repeats`` times, interleaved (A B C A B C ...) so that load from
    other processes on a shared machine affects all of them alike; one untimed warm-up of those
    named in ``warm`` first."""
    results = {name: fn() for name, fn in fns.items() if name in warm}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return times, results


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def cka_macs(t: int, n: int, d: int) -> float:
    """GEMM multiply-adds of one batched CKA over ``t`` representations of one layer, under the
    module's own cost model (the path it picks, and the flops it picks it by)."""
    block = min(similarity._GRAM_BLOCK, n)
    if similarity._use_feature_path(t, n, d):
        return float(n * (t * d) ** 2)
    return t * n * (n + block) / 2 * (d + t)


@dataclass(frozen=True)
class Kernel:
    """One comparison: a per-pair loop of ``linear_cka`` against one batched call."""

    name: str
    layers: int
    baseline: Callable[[], torch.Tensor]
    reference: Callable[[], torch.Tensor] | None
    candidate: Callable[[], torch.Tensor]
    minibatch: Callable[[], torch.Tensor] | None


def kernels(args: argparse.Namespace, reps: torch.Tensor, debiased: bool) -> list[Kernel]:
    single = reps[:, :1]
    mb = args.batch_size
    out = []
    if "pairwise" in args.kernels:
        out.append(
            Kernel(
                "pairwise",
                1,
                lambda: loop_baseline(single, debiased)[0],
                (lambda: reference_loop(single, debiased)[0]) if args.reference else None,
                lambda: pairwise_cka(single[:, 0], debiased=debiased),
                None
                if mb is None
                else lambda: pairwise_cka(single[:, 0], debiased=debiased, batch_size=mb),
            )
        )
    if "layerwise" in args.kernels:
        out.append(
            Kernel(
                "layerwise",
                args.layers,
                lambda: loop_baseline(reps, debiased),
                (lambda: reference_loop(reps, debiased)) if args.reference else None,
                lambda: layerwise_pairwise_cka(reps, debiased=debiased),
                None
                if mb is None
                else lambda: layerwise_pairwise_cka(reps, debiased=debiased, batch_size=mb),
            )
        )
    return out


def measure(
    kernel_list: list[Kernel], repeats: int, t: int, n: int, d: int
) -> dict[str, dict[str, object]]:
    """Time every kernel's baseline and candidate (and minibatch) interleaved; compare results."""
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    for k in kernel_list:
        fns[f"{k.name}/baseline"] = k.baseline
        if k.reference is not None:
            fns[f"{k.name}/reference"] = k.reference
        fns[f"{k.name}/candidate"] = k.candidate
        if k.minibatch is not None:
            fns[f"{k.name}/minibatch"] = k.minibatch
    warm = {name for name in fns if name.startswith("pairwise/")} or set(fns)
    times, outs = time_interleaved(fns, repeats, warm)
    report: dict[str, dict[str, object]] = {}
    for k in kernel_list:
        base_t, cand_t = times[f"{k.name}/baseline"], times[f"{k.name}/candidate"]
        base, cand = outs[f"{k.name}/baseline"], outs[f"{k.name}/candidate"]
        pairs = t * (t - 1) // 2 * k.layers
        off_diag = cand[..., ~torch.eye(t, dtype=torch.bool)]
        entry: dict[str, object] = {
            "layers": k.layers,
            "pair_layers": pairs,
            "baseline": {**summary(base_t), "times_s": base_t},
            "candidate": {**summary(cand_t), "times_s": cand_t},
            "speed_ratio": statistics.median(base_t) / statistics.median(cand_t),
            "speed_ratio_of_minima": min(base_t) / min(cand_t),
            "gemm_macs_ratio": pairs * cka_macs(2, n, d) / (k.layers * cka_macs(t, n, d)),
            "max_abs_diff": float((base - cand).abs().max()),
            "cka_offdiag_range": [float(off_diag.min()), float(off_diag.max())],
        }
        if k.reference is not None:
            ref_t = times[f"{k.name}/reference"]
            entry["reference"] = {
                **summary(ref_t),
                "times_s": ref_t,
                "speed_ratio": statistics.median(ref_t) / statistics.median(cand_t),
                "speed_ratio_of_minima": min(ref_t) / min(cand_t),
                # two full n x n Gram GEMMs per pair (n^2 d multiply-adds each)
                "gemm_macs_ratio": pairs * 2 * n * n * d / (k.layers * cka_macs(t, n, d)),
                "max_abs_diff": float((outs[f"{k.name}/reference"] - cand).abs().max()),
            }
        if k.minibatch is not None:
            mb_t = times[f"{k.name}/minibatch"]
            entry["minibatch"] = {
                **summary(mb_t),
                "times_s": mb_t,
                "speed_ratio": statistics.median(base_t) / statistics.median(mb_t),
                "max_abs_diff_vs_full": float((outs[f"{k.name}/minibatch"] - cand).abs().max()),
            }
        report[k.name] = entry
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", type=int, default=8, help="number of models")
    parser.add_argument("--n", type=int, default=2048, help="number of inputs")
    parser.add_argument("--d", type=int, default=384, help="representation width")
    parser.add_argument("--layers", type=int, default=7, help="layers per model (L + 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="also time minibatch CKA")
    parser.add_argument("--biased", action="store_true", help="biased instead of debiased HSIC")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        default=f"1,{os.cpu_count() or 1}",
        help="comma-separated torch thread counts, each measured in turn (default: 1,all)",
    )
    parser.add_argument("--kernels", default="pairwise,layerwise", help="pairwise and/or layerwise")
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the second baseline (the textbook float64 formula, pair by pair)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out/cka.json"))
    args = parser.parse_args(argv)
    args.threads = list(dict.fromkeys(int(v) for v in args.threads.split(",")))
    args.kernels = [k.strip() for k in args.kernels.split(",")]
    if not set(args.kernels) <= {"pairwise", "layerwise"} or not args.kernels:
        parser.error("--kernels takes pairwise and/or layerwise")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    debiased = not args.biased
    reps = make_reps(args.t, args.layers, args.n, args.d, args.seed)
    kernel_list = kernels(args, reps, debiased)
    load_before = os.getloadavg()
    by_threads: dict[str, dict[str, dict[str, object]]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        by_threads[str(threads)] = measure(kernel_list, args.repeats, args.t, args.n, args.d)
    load_after = os.getloadavg()
    max_diff = max(
        float(str(part["max_abs_diff"]))
        for res in by_threads.values()
        for entry in res.values()
        for part in (entry, entry.get("reference") or entry)
        if isinstance(part, dict)
    )
    result: dict[str, object] = {
        "config": {
            "t": args.t,
            "n": args.n,
            "d": args.d,
            "layers": args.layers,
            "repeats": args.repeats,
            "threads": args.threads,
            "kernels": args.kernels,
            "debiased": debiased,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "input_dtype": str(reps.dtype),
        },
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": "cpu",
            "loadavg_before": list(load_before),
            "loadavg_after": list(load_after),
        },
        "results": by_threads,
        "max_abs_diff": max_diff,
        "tolerance": TOLERANCE,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_report(args, result, by_threads)
    return 0 if max_diff <= TOLERANCE else 1


def print_report(
    args: argparse.Namespace,
    result: dict[str, object],
    by_threads: dict[str, dict[str, dict[str, object]]],
) -> None:
    machine = result["machine"]
    assert isinstance(machine, dict)
    print(
        f"linear CKA ({'biased' if args.biased else 'debiased'}), T={args.t} models, "
        f"n={args.n}, d={args.d}, {args.layers} layers for layerwise, float32 input, "
        f"{args.repeats} repeats, interleaved"
    )
    print(
        f"machine: {machine['cores']} cores, {machine['cpu']}, torch {machine['torch']}, "
        f"device cpu; load average (1/5/15 min) "
        f"{'/'.join(f'{v:.2f}' for v in machine['loadavg_before'])} -> "
        f"{'/'.join(f'{v:.2f}' for v in machine['loadavg_after'])} (shared machine)"
    )
    print(
        f"{'threads':>7s} {'kernel':10s} {'pairs':>5s} {'baseline s med (min-max)':>26s} "
        f"{'batched s med (min-max)':>25s} {'ratio':>6s} {'r(min)':>6s} {'ceiling':>7s} "
        f"{'max diff':>8s}"
    )
    for threads, res in by_threads.items():
        for name, e in res.items():
            b, c = e["baseline"], e["candidate"]
            assert isinstance(b, dict) and isinstance(c, dict)
            print(
                f"{threads:>7s} {name:10s} {e['pair_layers']!s:>5s} "
                f"{span(b):>26s} {span(c):>25s} {e['speed_ratio']:6.2f} "
                f"{e['speed_ratio_of_minima']:6.2f} {e['gemm_macs_ratio']:7.2f} "
                f"{e['max_abs_diff']:8.1e}"
            )
            ref = e.get("reference")
            if isinstance(ref, dict):
                print(
                    f"{'':>7s} {'  vs ref':10s} {'':>5s} {span(ref):>26s} {'':>25s} "
                    f"{ref['speed_ratio']:6.2f} {ref['speed_ratio_of_minima']:6.2f} "
                    f"{ref['gemm_macs_ratio']:7.2f} {ref['max_abs_diff']:8.1e}"
                )
            mb = e.get("minibatch")
            if isinstance(mb, dict):
                print(
                    f"{'':>7s} {'  minibatch':10s} (batch_size={args.batch_size}) "
                    f"{span(mb)}, ratio {mb['speed_ratio']:.2f}x, "
                    f"max |minibatch - full| {mb['max_abs_diff_vs_full']:.1e} (other estimator)"
                )
    ok = float(str(result["max_abs_diff"])) <= TOLERANCE
    print(
        "baseline = a loop of linear_cka over the pairs; vs ref = a loop of the textbook float64 "
        "formula (both Gram matrices per pair); ratio = baseline median / batched median; "
        "r(min) = ratio of minima; ceiling = ratio of GEMM multiply-adds (the speed ratio at "
        "equal GEMM efficiency)"
    )
    print(
        f"max |baseline or reference - batched| = {result['max_abs_diff']:.1e} "
        f"(tolerance {TOLERANCE:.0e}: "
        f"{'OK' if ok else 'FAIL'}); JSON: {args.out}"
    )


def span(s: dict[str, object]) -> str:
    return f"{s['median_s']:.3f} ({s['min_s']:.3f}-{s['max_s']:.3f})"


if __name__ == "__main__":
    raise SystemExit(main())
