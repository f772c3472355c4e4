"""The recommendation report: SVG charts made on the server, and the view its HTML page renders.

Pure functions of a :class:`models.schema.Recommendation` (no FastAPI, no torch), so the page,
the SVG downloads and the client's offline ``report`` command draw the same pictures:

* :func:`heatmap_svg` — a T x T heatmap (lower triangle: one cell per task pair) of min-layer
  CKA or of the gradient cosine, tasks ordered by recommended group, group borders drawn;
* :func:`cka_curve_svg` — one pair's CKA over layers, the limiting layer highlighted and
  ``tau_rep`` dashed;
* :func:`verdict_sentence` — the verdict and grouping in one sentence;
* :func:`report_view` — everything ``templates/report.html`` shows.

Every string that came from a user (task names, their pairs' failure reasons) is escaped here,
since the SVG is placed in the page as markup.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any, Literal

from models.schema import PairReport, Recommendation

__all__ = [
    "METRICS",
    "cka_curve_svg",
    "heatmap_svg",
    "report_view",
    "task_order",
    "verdict_sentence",
]

Metric = Literal["cka", "grad"]
METRICS: dict[str, str] = {"cka": "min-layer CKA", "grad": "gradient cosine"}
"""The heatmaps' metrics (the name in URLs) and their titles."""

CELL = 48
FONT = 12
CHAR_W = 7.2  # a generous width of one character at FONT px (sans-serif)


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def task_order(rec: Recommendation) -> list[str]:
    """The tasks in recommended-group order (groups as the grouping lists them), then any
    task the grouping does not name, in the recommendation's order."""
    order = [t for group in rec.grouping for t in group]
    seen = set(order)
    return order + [t.name for t in rec.tasks if t.name not in seen]


def _pairs(rec: Recommendation) -> dict[frozenset[str], PairReport]:
    return {frozenset(p.tasks): p for p in rec.pairs}


# --------------------------------------------------------------------------------------------
# colours


def _mix(stops: Sequence[tuple[float, tuple[int, int, int]]], t: float) -> tuple[int, int, int]:
    t = min(max(t, stops[0][0]), stops[-1][0])
    for (t0, c0), (t1, c1) in itertools.pairwise(stops):
        if t <= t1:
            w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            r, g, b = (round(a + (z - a) * w) for a, z in zip(c0, c1, strict=True))
            return r, g, b
    return stops[-1][1]


_SEQUENTIAL = ((0.0, (247, 251, 255)), (0.5, (107, 174, 214)), (1.0, (8, 48, 107)))
_DIVERGING = ((-1.0, (178, 24, 43)), (0.0, (247, 247, 247)), (1.0, (33, 102, 172)))


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _ink(rgb: tuple[int, int, int]) -> str:
    """Black or white text, whichever reads on this fill."""
    r, g, b = rgb
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"


@dataclass(frozen=True)
class _Scale:
    low: float
    high: float
    diverging: bool

    def colour(self, value: float) -> tuple[int, int, int]:
        if not math.isfinite(value):
            return (200, 200, 200)
        if self.diverging:
            return _mix(_DIVERGING, value / self.high)
        return _mix(_SEQUENTIAL, (value - self.low) / (self.high - self.low))


def _partial(pair: PairReport) -> bool:
    """Whether the pair's verdict reads its partial CKA (setting rep_measure), recorded."""
    return _judged(pair)[0] != "CKA"


def _judged(pair: PairReport) -> tuple[str, list[float], float, int | None]:
    """The representation measure the pair's verdict reads: its name, per-layer values, minimum
    and the minimum's layer (None: a partial CKA no layer of which counts)."""
    values, low = pair.partial_cka_per_layer, pair.partial_cka_min
    if pair.rep_measure == "partial_cka" and values is not None and low is not None:
        return "partial CKA", values, low, pair.partial_cka_min_layer
    return "CKA", pair.cka_per_layer, pair.cka_min, pair.cka_min_layer


def _measure_title(rec: Recommendation) -> str:
    return "min-layer partial CKA" if any(map(_partial, rec.pairs)) else METRICS["cka"]


def _scale(metric: Metric, values: Sequence[float], *, signed: bool = False) -> _Scale:
    if metric == "cka":
        # A partial CKA is signed: near 0 or below where two models moved apart.
        return _Scale(-1.0, 1.0, diverging=True) if signed else _Scale(0.0, 1.0, diverging=False)
    # Gradient cosines are mostly small: a symmetric range around 0 that fits them (at least
    # +-0.1, at most +-1), so that their signs show; the legend states the range.
    finite = [abs(v) for v in values if math.isfinite(v)]
    top = max(finite, default=0.1)
    top = min(1.0, max(0.1, math.ceil(top * 20) / 20))
    return _Scale(-top, top, diverging=True)


def _pair_value(pair: PairReport, metric: Metric) -> float:
    return _judged(pair)[2] if metric == "cka" else pair.grad_cosine


def _pair_title(pair: PairReport, metric: Metric, a: str, b: str) -> str:
    if metric == "cka":
        label, _, low, layer = _judged(pair)
        where = "no layer where both models moved" if layer is None else f"layer {layer}"
        detail = f"min-layer {label} {low:.3f} ({where})"
        if label != "CKA":
            detail += f"; min-layer CKA {pair.cka_min:.3f} (layer {pair.cka_min_layer})"
        if pair.cka_waived:
            detail += ", not read: a task's single-task model learnt little"
    else:
        detail = f"gradient cosine {pair.grad_cosine:+.3f}, conflict rate {pair.conflict_rate:.2f}"
    verdict = "passes" if pair.passes else "fails: " + "; ".join(pair.failures)
    return f"{a} × {b}: {detail}; the pair {verdict}"


# --------------------------------------------------------------------------------------------
# heatmap


def _group_outline(start: int, end: int, x0: float, y0: float) -> str:
    """The border of a group's block of the lower triangle (rows and columns start..end-1,
    diagonal included): a staircase from the top-left corner down to the bottom-right one."""
    points = [(start, start)]
    for k in range(start, end):
        points += [(k + 1, k), (k + 1, k + 1)]
    points += [(end, end), (start, end)]
    return " ".join(f"{x0 + c * CELL:.0f},{y0 + r * CELL:.0f}" for c, r in points)


def heatmap_svg(rec: Recommendation, metric: Metric, *, standalone: bool = False) -> str:
    """The T x T heatmap of ``metric`` (``"cka"``: min-layer CKA; ``"grad"``: gradient cosine).

    Lower triangle only, so there is one cell (``rect.pair-cell``, with ``data-a``, ``data-b``
    and ``data-value``) per task pair; the diagonal holds the task's own cell. Tasks are in
    recommended-group order and each group's block has a border (``polygon.group-border``).
    ``standalone`` adds the XML namespace header a file on its own needs.
    """
    order = task_order(rec)
    pairs = _pairs(rec)
    n = len(order)
    values = [_pair_value(p, metric) for p in rec.pairs]
    scale = _scale(metric, values, signed=any(map(_partial, rec.pairs)))
    longest = max((len(t) for t in order), default=1)
    label_w = min(260.0, longest * CHAR_W + 12)
    x0, y0 = label_w, 28.0
    foot = min(200.0, longest * CHAR_W * 0.72 + 24)
    legend_h = 46.0
    width = x0 + n * CELL + 16
    height = y0 + n * CELL + foot + legend_h
    title = _measure_title(rec) if metric == "cka" else METRICS[metric]
    out: list[str] = []
    header = 'xmlns="http://www.w3.org/2000/svg" ' if standalone else ""
    out.append(
        f'<svg {header}class="heatmap" data-metric="{metric}" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{_e(title)} heatmap of {n} tasks" font-family="sans-serif" '
        f'font-size="{FONT}">'
    )
    out.append(f'<text x="{x0:.0f}" y="16" font-weight="bold">{_e(title)}</text>')
    for r, row_task in enumerate(order):
        cy = y0 + r * CELL
        out.append(
            f'<text class="row-label" x="{x0 - 6:.0f}" y="{cy + CELL / 2 + 4:.0f}" '
            f'text-anchor="end">{_e(row_task)}</text>'
        )
        for c in range(r + 1):
            cx = x0 + c * CELL
            if c == r:
                out.append(
                    f'<rect class="self-cell" x="{cx:.0f}" y="{cy:.0f}" width="{CELL}" '
                    f'height="{CELL}" fill="#e0e0e0" stroke="#ffffff"/>'
                )
                continue
            col_task = order[c]
            pair = pairs.get(frozenset((row_task, col_task)))
            value = _pair_value(pair, metric) if pair is not None else math.nan
            rgb = scale.colour(value)
            text = "n/a" if not math.isfinite(value) else f"{value:.2f}"
            tip = (
                _pair_title(pair, metric, col_task, row_task)
                if pair is not None
                else f"{col_task} × {row_task}: not measured"
            )
            mark = "" if pair is None or pair.passes else " fails"
            out.append(
                f'<g><title>{_e(tip)}</title><rect class="pair-cell{mark}" '
                f'data-a="{_e(col_task)}" data-b="{_e(row_task)}" data-value="{text}" '
                f'x="{cx:.0f}" y="{cy:.0f}" width="{CELL}" height="{CELL}" '
                f'fill="{_hex(rgb)}" stroke="#ffffff"/>'
                f'<text x="{cx + CELL / 2:.0f}" y="{cy + CELL / 2 + 4:.0f}" '
                f'text-anchor="middle" fill="{_ink(rgb)}">{text}</text></g>'
            )
    base = y0 + n * CELL
    for c, col_task in enumerate(order):
        cx = x0 + c * CELL + CELL / 2
        out.append(
            f'<text class="col-label" x="{cx:.0f}" y="{base + 8:.0f}" text-anchor="end" '
            f'transform="rotate(-45 {cx:.0f} {base + 8:.0f})">{_e(col_task)}</text>'
        )
    start = 0
    for group in rec.grouping:
        end = start + len(group)
        out.append(
            f'<polygon class="group-border" data-tasks="{_e(", ".join(group))}" '
            f'points="{_group_outline(start, end, x0, y0)}" fill="none" stroke="#111111" '
            f'stroke-width="3"/>'
        )
        start = end
    out.append(_legend(scale, x0, base + foot, min(240.0, max(160.0, n * CELL))))
    out.append("</svg>")
    return "".join(out)


def _legend(scale: _Scale, x: float, y: float, width: float) -> str:
    steps = 24
    parts = ['<g class="legend">']
    for k in range(steps):
        v = scale.low + (scale.high - scale.low) * (k + 0.5) / steps
        parts.append(
            f'<rect x="{x + k * width / steps:.1f}" y="{y:.0f}" width="{width / steps + 0.5:.1f}" '
            f'height="12" fill="{_hex(scale.colour(v))}"/>'
        )
    mid = (scale.low + scale.high) / 2
    for frac, v in ((0.0, scale.low), (0.5, mid), (1.0, scale.high)):
        anchor = {0.0: "start", 0.5: "middle", 1.0: "end"}[frac]
        label = f"{v:+.2f}" if scale.diverging else f"{v:.2f}"
        parts.append(
            f'<text x="{x + frac * width:.0f}" y="{y + 26:.0f}" text-anchor="{anchor}">'
            f"{label}</text>"
        )
    parts.append("</g>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# CKA over layers


def cka_curve_svg(pair: PairReport, tau_rep: float | None) -> str:
    """One pair's CKA per layer (0 = embeddings), its limiting (minimum) layer marked, and the
    ``tau_rep`` threshold dashed when it is known. Where the verdict reads the partial CKA
    (``rep_measure``), that is the curve, on a signed scale, with the raw CKA grey behind it and
    the layers it is not read at (a model barely moved there) drawn hollow."""
    width, height = 280.0, 160.0
    left, right, top, bottom = 34.0, 10.0, 24.0, 28.0
    label, values, _, low_layer = _judged(pair)
    partial = _partial(pair)
    counted = set(pair.partial_cka_layers or ()) if partial else set(range(len(values)))
    floor = -1.0 if partial else 0.0
    layers = max(len(values) - 1, 1)

    def px(layer: int) -> float:
        return left + (width - left - right) * layer / layers

    def py(value: float) -> float:
        v = min(max(value, floor), 1.0) if math.isfinite(value) else floor
        return top + (height - top - bottom) * (1.0 - (v - floor) / (1.0 - floor))

    a, b = pair.tasks
    out = [
        f'<svg class="cka-curve" data-pair="{_e(a)}|{_e(b)}" data-measure="{_e(label)}" '
        f'width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{_e(label)} over layers, {_e(a)} and {_e(b)}" font-family="sans-serif" '
        f'font-size="11">',
        f'<text x="{left:.0f}" y="14" font-weight="bold">{_e(a)} × {_e(b)}</text>',
    ]
    for tick in (-1.0, 0.0, 1.0) if partial else (0.0, 0.5, 1.0):
        out.append(
            f'<line x1="{left:.0f}" x2="{width - right:.0f}" y1="{py(tick):.1f}" '
            f'y2="{py(tick):.1f}" stroke="#e5e5e5"/>'
            f'<text x="{left - 4:.0f}" y="{py(tick) + 4:.1f}" text-anchor="end">{tick:.1f}</text>'
        )
    for layer in range(len(values)):
        out.append(
            f'<text x="{px(layer):.1f}" y="{height - bottom + 14:.0f}" '
            f'text-anchor="middle">{layer}</text>'
        )
    out.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 2:.0f}" '
        f'text-anchor="middle" fill="#555555">layer</text>'
    )
    if tau_rep is not None and math.isfinite(tau_rep):
        out.append(
            f'<line class="threshold" x1="{left:.0f}" x2="{width - right:.0f}" '
            f'y1="{py(tau_rep):.1f}" y2="{py(tau_rep):.1f}" stroke="#b2182b" '
            f'stroke-dasharray="4 3"><title>tau_rep {tau_rep:g}</title></line>'
        )
    if partial:
        raw = " ".join(f"{px(k):.1f},{py(v):.1f}" for k, v in enumerate(pair.cka_per_layer))
        out.append(
            f'<polyline class="raw-cka" points="{raw}" fill="none" stroke="#bbbbbb" '
            f'stroke-width="1.5"><title>CKA per layer (not read by the verdict)</title></polyline>'
        )
    points = " ".join(f"{px(k):.1f},{py(v):.1f}" for k, v in enumerate(values))
    out.append(f'<polyline points="{points}" fill="none" stroke="#2166ac" stroke-width="2"/>')
    for k, v in enumerate(values):
        limiting = k == low_layer
        read = k in counted
        colour = "#b2182b" if limiting else "#2166ac"
        note = "" if read else " (not read: a model barely moved)"
        if limiting:
            note = " (limiting layer)"
        out.append(
            f'<circle class="{"limiting" if limiting else "layer" if read else "unread"}" '
            f'cx="{px(k):.1f}" cy="{py(v):.1f}" r="{5 if limiting else 3}" '
            f'fill="{colour if read else "#ffffff"}" stroke="{colour}"><title>layer {k}: '
            f"{_e(label)} {v:.3f}{note}</title></circle>"
        )
    if low_layer is not None and 0 <= low_layer < len(values):
        k = low_layer
        anchor = "end" if px(k) > width / 2 else "start"
        shift = -8 if anchor == "end" else 8
        out.append(
            f'<text x="{px(k) + shift:.1f}" y="{py(values[k]) - 8:.1f}" text-anchor="{anchor}" '
            f'fill="#b2182b">min {values[k]:.2f} @ layer {k}</text>'
        )
    elif partial:
        out.append(
            f'<text class="unread" x="{width - right:.0f}" y="{top + 12:.0f}" text-anchor="end" '
            f'fill="#555555">no layer read<title>partial CKA 1.0: no layer where both models '
            f"moved from the pretrained encoder</title></text>"
        )
    if pair.cka_waived:
        out.append(
            f'<text class="waived" x="{width - right:.0f}" y="{top + 12:.0f}" text-anchor="end" '
            f'fill="#555555">not read<title>{_e(label)} not read: a task of this pair learnt '
            f"little (waive_unlearnt_cka)</title></text>"
        )
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# the sentence and the page's view


def _set(tasks: Sequence[str]) -> str:
    return "{" + ", ".join(tasks) + "}"


def verdict_sentence(rec: Recommendation) -> str:
    """The verdict and the grouping in one sentence."""
    n_tasks = len(rec.tasks)
    shared = [g for g in rec.grouping if len(g) > 1]
    alone = [g[0] for g in rec.grouping if len(g) == 1]
    n_models = len(rec.grouping)
    if rec.verdict.kind == "single_model" and len(rec.grouping) == 1:
        sentence = (
            f"Train one multi-task model for all {n_tasks} tasks {_set(rec.grouping[0])}: "
            "it is predicted to match the single-task models."
        )
    elif not shared:
        sentence = (
            f"Keep {n_tasks} single-task models: no group of these tasks is predicted to "
            "match its single-task models."
        )
    else:
        parts = [f"one multi-task model for {_set(g)}" for g in shared]
        parts[1:] = [p.replace("one multi-task model for", "one for") for p in parts[1:]]
        if alone:
            kind = "a single-task model for" if len(alone) == 1 else "single-task models for"
            parts.append(f"{kind} {', '.join(alone)}")
        joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        sentence = (
            f"Train {n_models} model{'s' if n_models != 1 else ''} for the {n_tasks} tasks: "
            f"{joined}."
        )
    if not rec.verdict.feasible:
        sentence += " The model budget forced groups that fail the thresholds."
    return sentence


def _tau_rep(rec: Recommendation) -> float | None:
    thresholds = rec.settings.get("thresholds")
    if isinstance(thresholds, dict) and isinstance(thresholds.get("tau_rep"), int | float):
        return float(thresholds["tau_rep"])
    return None


def report_view(rec: Recommendation) -> dict[str, Any]:
    """What ``report.html`` shows, in the order it shows it."""
    order = task_order(rec)
    position = {t: i for i, t in enumerate(order)}
    pairs = sorted(
        rec.pairs,
        key=lambda p: tuple(sorted((position.get(p.tasks[0], 0), position.get(p.tasks[1], 0)))),
    )
    tau_rep = _tau_rep(rec)
    group_of = {t: g for g in rec.groups if g.origin == "recommended" for t in g.tasks}
    return {
        "sentence": verdict_sentence(rec),
        "verdict": rec.verdict,
        "order": order,
        "tasks": sorted(rec.tasks, key=lambda t: position.get(t.name, len(order))),
        "groups": rec.groups,
        "group_of": group_of,
        "heatmaps": {"cka": heatmap_svg(rec, "cka"), "grad": heatmap_svg(rec, "grad")},
        "measure": _measure_title(rec),
        "partial": any(map(_partial, rec.pairs)),
        "curves": [(p, cka_curve_svg(p, tau_rep)) for p in pairs],
        "candidates": rec.candidates,
        "verification": rec.verification or [],
        "thresholds": rec.settings.get("thresholds"),
        "model": rec.settings.get("model"),
        "timings": rec.timings,
    }
