"""A readable text summary of a recommendation (for terminals and logs)."""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "   -" if x is None else f"{100 * x:5.1f}"


def _baseline(stl: dict[str, Any]) -> str:
    """`` chance 18.2`` beside a model's scores, flagged when the model did not beat it."""
    if stl.get("baseline_macro_f1") is None:
        return ""
    flag = "  (learnt little)" if stl.get("learnt") is False else ""
    return f"  chance {_pct(stl['baseline_macro_f1'])}{flag}"


def render(rec: dict[str, Any]) -> str:
    lines: list[str] = []
    verdict = rec["verdict"]
    lines.append(f"Recommendation: {verdict['summary']}")
    for group in rec["grouping"]:
        lines.append(f"  model: {', '.join(group)}")
    for note in verdict.get("notes", []):
        lines.append(f"  note: {note}")
    lines.append("")
    lines.append("Single-task models (validation):")
    width = max(len(t["name"]) for t in rec["tasks"])
    for t in rec["tasks"]:
        aside = ""
        if t["set_aside"]:
            aside = "  set aside: " + ", ".join(
                f"{c['label']} ({c['count']})" for c in t["set_aside"]
            )
        lines.append(
            f"  {t['name']:<{width}}  macro-F1 {_pct(t['stl']['macro_f1'])}  "
            f"acc {_pct(t['stl']['accuracy'])}  train {t['n_train']}  val {t['n_val']}{aside}"
            f"{_baseline(t['stl'])}"
        )
    lines.append("")
    lines.append("Group verdicts:")
    for g in rec["groups"]:
        if len(g["tasks"]) < 2:
            continue
        mark = "MTL matches STL" if g["mtl_matches_stl"] else "MTL would lose"
        chance = "" if g.get("p_match") is None else f" (p_match {g['p_match']:.2f})"
        lines.append(f"  [{', '.join(g['tasks'])}] ({'/'.join(g['origins'])}): {mark}{chance}")
        lines.extend(f"      - {e}" for e in g["evidence"][:4])
        if len(g["evidence"]) > 4:
            lines.append(f"      - ... and {len(g['evidence']) - 4} more")
    lines.append("")
    partial = any(p.get("rep_measure") == "partial_cka" for p in rec["pairs"])
    lines.append(
        "Pairs:  "
        + ("min-partial-CKA (layer)  " if partial else "")
        + "min-CKA (layer)  mean-CKA  grad-cos  conflicts  TAG x1000 a->b / b->a"
    )
    for p in rec["pairs"]:
        a, b = p["tasks"]
        ok = "ok" if p["passes"] else "x "
        judged = ""
        if partial:
            layer = p.get("partial_cka_min_layer")
            judged = f"{p['partial_cka_min']:+.2f} ({'-' if layer is None else f'L{layer}'})  "
        lines.append(
            f"  {ok} {a} / {b}: {judged}{p['cka_min']:.2f} (L{p['cka_min_layer']})"
            f"  {p['cka_mean']:.2f}"
            f"  {p['grad_cosine']:+.2f}  {100 * p['conflict_rate']:.0f}%"
            f"  {1000 * p['tag_affinity'][0]:+.2f} / {1000 * p['tag_affinity'][1]:+.2f}"
            + ("  (CKA not read: a task learnt little)" if p.get("cka_waived") else "")
        )
    if rec["candidates"]:
        lines.append("")
        lines.append("Candidates:")
        for c in rec["candidates"]:
            groups = " + ".join("{" + ", ".join(g["tasks"]) + "}" for g in c["groups"])
            best = "  <- best" if c["best"] else ""
            state = "passes" if c["passes"] else "fails"
            lines.append(f"  #{c['index']}: {groups}: {state}, {c['n_models']} models{best}")
        if verdict.get("beats_candidates") is not None:
            word = "beats" if verdict["beats_candidates"] else "does not beat"
            lines.append(f"  the recommended grouping {word} the best candidate")
    if rec.get("verification"):
        lines.append("")
        lines.append("Verification (measured MTL vs STL macro-F1 on held-out data):")
        for v in rec["verification"]:
            margin = v.get("margin_se")
            decided = ""
            if margin is not None:
                decided = f"; margin {margin:+.1f} SE" + (
                    ", a coin toss: measure again with more seeds"
                    if round(abs(margin), 1) < 1
                    else ""
                )
            lines.append(
                f"  [{', '.join(v['tasks'])}]: {'matches' if v['matches'] else 'loses'}"
                f" (predicted {'match' if v['predicted'] else 'loss'}: {v['outcome']}{decided})"
            )
            for t in v["per_task"]:
                lines.append(
                    f"      {t['task']}: STL {_pct(t['stl_macro_f1'])}"
                    f" MTL {_pct(t['mtl_macro_f1'])}  delta {100 * t['delta']:+.1f}"
                    f" (tol {100 * t['tolerance']:.1f}) {t['effect']}"
                )
                if len(t.get("seed_deltas") or []) > 1:
                    per_seed = " ".join(f"{100 * d:+.1f}" for d in t["seed_deltas"])
                    lines.append(f"        per seed: {per_seed}")
    lines.append("")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in rec["timings"].items())
    lines.append(f"Timings: {timing}")
    return "\n".join(lines)
