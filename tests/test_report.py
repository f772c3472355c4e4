"""The report's SVG and sentence (app/report.py): structure, ordering and escaping, on any
recommendation (hypothesis builds the task names and the pair evidence)."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.pages import standalone_report
from app.report import cka_curve_svg, heatmap_svg, report_view, task_order, verdict_sentence
from models.schema import GroupReport, PairReport, Recommendation
from tests.test_api_jobs import sample_recommendation

SVG = "{http://www.w3.org/2000/svg}"

names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
)


def build(tasks: list[str], grouping: list[list[str]], values: list[float]) -> Recommendation:
    base = sample_recommendation()
    template_task = base["tasks"][0]
    base["tasks"] = [{**template_task, "name": t, "column": t} for t in tasks]
    pairs = []
    for (a, b), v in zip(itertools.combinations(tasks, 2), itertools.cycle(values), strict=False):
        pairs.append(
            PairReport(
                tasks=(a, b),
                cka_per_layer=[1.0, abs(v), 0.5],
                cka_min=min(abs(v), 0.5),
                cka_min_layer=1 if abs(v) < 0.5 else 2,
                cka_mean=0.6,
                grad_cosine=v,
                grad_cosine_per_layer=[v, v, v],
                conflict_rate=0.2,
                tag_affinity=(0.0, 0.0),
                affinity=0.5,
                passes=v > 0,
                failures=[] if v > 0 else ["gradient cosine below tau_grad"],
            ).model_dump(mode="json")
        )
    base["pairs"] = pairs
    base["grouping"] = grouping
    base["groups"] = [
        GroupReport(
            tasks=g,
            origin="recommended",
            origins=["recommended"],
            mtl_matches_stl=True,
            evidence=[],
            score=None,
            margin=None,
        ).model_dump(mode="json")
        for g in grouping
    ]
    base["candidates"] = []
    base["verdict"]["kind"] = "grouped" if len(grouping) > 1 else "single_model"
    base["settings"]["thresholds"] = {"tau_rep": 0.175, "tau_grad": -0.25, "rho": 0.45}
    return Recommendation.model_validate(base)


@st.composite
def recommendations(draw: Any) -> Recommendation:
    tasks = draw(st.lists(names, min_size=2, max_size=7, unique=True))
    order = draw(st.permutations(tasks))
    cuts = sorted(draw(st.sets(st.integers(1, len(tasks) - 1), max_size=len(tasks) - 1)))
    bounds = [0, *cuts, len(tasks)]
    grouping = [list(order[a:b]) for a, b in itertools.pairwise(bounds)]
    values = draw(st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=len(tasks) ** 2))
    return build(tasks, grouping, values)


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


@settings(max_examples=60, deadline=None)
@given(recommendations(), st.sampled_from(["cka", "grad"]))
def test_heatmap_has_one_cell_per_pair_and_escapes_names(rec: Recommendation, metric: str) -> None:
    svg = heatmap_svg(rec, metric, standalone=True)  # type: ignore[arg-type]
    root = parse(svg)  # well-formed XML whatever the task names hold
    cells = [r for r in root.iter(f"{SVG}rect") if "pair-cell" in (r.get("class") or "")]
    names_ = [t.name for t in rec.tasks]
    assert len(cells) == len(names_) * (len(names_) - 1) // 2
    assert {frozenset((c.get("data-a"), c.get("data-b"))) for c in cells} == {
        frozenset(p) for p in itertools.combinations(names_, 2)
    }
    # Rows in recommended-group order; one border per group.
    rows = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "row-label"]
    assert rows == task_order(rec) == [t for g in rec.grouping for t in g]
    borders = [p for p in root.iter(f"{SVG}polygon") if p.get("class") == "group-border"]
    assert len(borders) == len(rec.grouping)
    # The value shown is the pair's.
    pairs = {frozenset(p.tasks): p for p in rec.pairs}
    for cell in cells:
        pair = pairs[frozenset((cell.get("data-a"), cell.get("data-b")))]
        expected = pair.cka_min if metric == "cka" else pair.grad_cosine
        assert cell.get("data-value") == f"{expected:.2f}"


@settings(max_examples=30, deadline=None)
@given(recommendations())
def test_curves_mark_the_limiting_layer_and_the_page_lists_every_task(
    rec: Recommendation,
) -> None:
    for pair in rec.pairs:
        root = parse(cka_curve_svg(pair, 0.175).replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))
        limiting = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "limiting"]
        assert len(limiting) == 1
        assert f"layer {pair.cka_min_layer}" in "".join(limiting[0].itertext())
    view = report_view(rec)
    assert [t.name for t in view["tasks"]] == task_order(rec)
    html = standalone_report(rec, "job-1", server="http://example.test")
    for task in rec.tasks:
        assert f">{_escaped(task.name)}<" in html
    assert "<script" not in html  # the report runs no script, and names cannot add one


def test_a_pair_whose_cka_is_waived_says_so_on_its_curve_and_cell() -> None:
    rec = build(["a", "b", "c"], [["a", "b", "c"]], [0.3])
    plain = rec.pairs[0]
    waived = plain.model_copy(update={"cka_waived": True})
    assert "not read" not in cka_curve_svg(plain, 0.2)
    root = parse(cka_curve_svg(waived, 0.2).replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))
    (mark,) = [t for t in root.iter(f"{SVG}text") if t.get("class") == "waived"]
    assert "learnt little" in "".join(mark.itertext())
    rec.pairs[0] = waived
    cells = parse(heatmap_svg(rec, "cka").replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))
    titles = ["".join(t.itertext()) for t in cells.iter(f"{SVG}title")]
    assert sum("not read: a task's single-task model learnt little" in t for t in titles) == 1


def test_a_partial_cka_pair_is_drawn_on_its_own_signed_scale() -> None:
    rec = build(["a", "b", "c"], [["a", "b", "c"]], [0.3])
    partial = rec.pairs[0].model_copy(
        update={
            "rep_measure": "partial_cka",
            "partial_cka_per_layer": [0.9, -0.4, 0.2],
            "partial_cka_layers": [1, 2],
            "partial_cka_min": -0.4,
            "partial_cka_min_layer": 1,
        }
    )
    root = parse(cka_curve_svg(partial, 0.0).replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))
    assert root.get("data-measure") == "partial CKA"
    circles = {c.get("class") for c in root.iter(f"{SVG}circle")}
    assert circles == {"unread", "limiting", "layer"}  # layer 0 is not read
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert "min -0.40 @ layer 1" in texts and "-1.0" in texts
    assert [p.get("class") for p in root.iter(f"{SVG}polyline")] == ["raw-cka", None]
    still = partial.model_copy(
        update={"partial_cka_layers": [], "partial_cka_min": 1.0, "partial_cka_min_layer": None}
    )
    root = parse(cka_curve_svg(still, 0.0).replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))
    assert {c.get("class") for c in root.iter(f"{SVG}circle")} == {"unread"}
    assert any(t.get("class") == "unread" for t in root.iter(f"{SVG}text"))
    rec.pairs[0] = partial
    cells = parse(heatmap_svg(rec, "cka").replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))
    assert "".join(next(cells.iter(f"{SVG}text")).itertext()) == "min-layer partial CKA"
    values = {c.get("data-value") for c in cells.iter(f"{SVG}rect") if c.get("data-a")}
    assert "-0.40" in values


def _escaped(text: str) -> str:
    from html import escape

    return escape(text, quote=True)


def test_a_hostile_task_name_stays_text() -> None:
    hostile = '<script>alert("x")</script>'
    rec = build([hostile, "b", "c"], [[hostile, "b"], ["c"]], [0.3])
    html = standalone_report(rec, "job-1", server="http://example.test")
    assert hostile not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html or (
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    )
    for metric in ("cka", "grad"):
        assert hostile not in heatmap_svg(rec, metric)  # type: ignore[arg-type]


def test_verdict_sentences() -> None:
    rec = build(["a", "b", "c", "d"], [["a", "b"], ["c", "d"]], [0.5])
    assert verdict_sentence(rec) == (
        "Train 2 models for the 4 tasks: one multi-task model for {a, b} and one for {c, d}."
    )
    rec = build(["a", "b", "c"], [["a", "b", "c"]], [0.5])
    assert verdict_sentence(rec) == (
        "Train one multi-task model for all 3 tasks {a, b, c}: it is predicted to match the "
        "single-task models."
    )
    rec = build(["a", "b", "c"], [["a"], ["b"], ["c"]], [0.5])
    rec = rec.model_copy(update={"verdict": rec.verdict.model_copy(update={"kind": "single_task"})})
    assert verdict_sentence(rec).startswith("Keep 3 single-task models")
    rec = build(["a", "b", "c"], [["a", "c"], ["b"]], [0.5])
    assert verdict_sentence(rec) == (
        "Train 2 models for the 3 tasks: one multi-task model for {a, c} and a single-task "
        "model for b."
    )


def test_gradient_scale_is_symmetric_and_fits_the_values() -> None:
    rec = build(["a", "b", "c"], [["a", "b", "c"]], [0.12, -0.03, 0.07])
    root = parse(heatmap_svg(rec, "grad", standalone=True))
    (group,) = [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend"]
    legend = [t.text for t in group.iter(f"{SVG}text")]
    assert legend == ["-0.15", "+0.00", "+0.15"]
