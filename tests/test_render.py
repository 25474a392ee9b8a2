"""Rendering reports (terminal, Markdown, HTML), comparing two, and the report JSON Schema.

The reports are built from real Measurement dicts (an Evaluator on a tiny classifier) with the shape the
statistics rework gives them: original and final on the report data, each pass's decision on the select data,
each pass's latency from the report's one timing run, a budget claim, auto's checks and candidates."""
from __future__ import annotations

import copy
import html
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from rich.console import Console

from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.ort import OrtSettings
from convopt.measure.plugin import TaskMetric
from convopt.render import (
    chart_panels, chart_points, comparison, render_comparison, render_comparison_markdown, render_html,
    render_markdown, render_table, render_text, report_schema, validate_report,
)
from convopt.render.chart import nice_ticks
from convopt.render.figures import interval
from convopt.render.html import CSP, SCRIPT, SCRIPT_HASH
from convopt.report import BudgetReport, NodeRewrite, NodeSkip, PassReport, Report
from tests.test_measure_evaluator import with_bias
from tests.test_measure_helpers import classifier_weights, tiny_classifier

EVIL = "<script>alert(1)</script>"
EVIL_REASON = "weight is not constant <img src=x onerror=alert(2)> | & more"
WIDTHS = (80, 120)


def first_class(outputs: dict, labels: object, inputs: dict) -> np.ndarray:  # noqa: ARG001
    """A task metric: 1 when the top class is class 0."""
    return (next(iter(outputs.values())).argmax(axis=1) == 0).astype(np.float64)


@pytest.fixture(scope="module")
def measurements() -> dict[str, dict]:
    return build_measurements()


def build_measurements() -> dict[str, dict]:
    """Real Measurement dicts: the select and report roles, labelled, unlabelled and with a task metric."""
    x = np.random.default_rng(7).normal(size=(40, 3, 8, 8)).astype(np.float32)
    settings = OrtSettings(warmup=1, repeats=3, batch_size=8, threads=1)
    probe = Evaluator(tiny_classifier("N"), EvalData({"X": x}, None, "probe"), settings, measure_latency=False)
    labels = probe.reference[0].argmax(axis=1)
    labels[:4] = (labels[:4] + 1) % 4
    _, b = classifier_weights()
    worse, slight = b.copy(), b.copy()
    worse[3] += 100.0
    slight[1] += 0.05
    out = {}
    for role in ("select", "report"):
        for tag, metric in (("", None), ("metric:", TaskMetric.from_callable(first_class))):
            ev = Evaluator(tiny_classifier("N"), EvalData({"X": x}, labels, f"data/{EVIL}.npz [{role}]"), settings,
                           role=role, metric=metric)
            out[f"{tag}{role}:baseline"] = ev.baseline().to_dict()
            out[f"{tag}{role}:slight"] = ev.measure(with_bias(tiny_classifier("N"), slight), "slight").to_dict()
            out[f"{tag}{role}:worse"] = ev.measure(with_bias(tiny_classifier("N"), worse), "worse").to_dict()
    out["unlabelled"] = probe.baseline().to_dict()
    return out


def rewrite(node: str, macs: tuple[int | None, int | None] = (1_000_000, 400_000)) -> NodeRewrite:
    return NodeRewrite(node=node, kernel=(5, 5), channels_in=16, channels_out=32, ranks={"R": 8},
                       macs_before=macs[0], macs_after=macs[1], params_before=12800, params_after=5120,
                       weight_rel_error=0.0123, new_nodes=(f"{node}/split5x5/a", f"{node}/split5x5/b"),
                       form="3x3·3x3")


def budget(certified: bool = True, message: str | None = None) -> BudgetReport:
    return BudgetReport(limits={"max_accuracy_drop": 2.0, "confidence": 0.95, "source": "given"}, confidence=0.95,
                        certified=certified, decision_samples=40, report_samples=40,
                        bound={"max_accuracy_drop": 1.5}, message=message,
                        data={"select": {"source": "sel.npz", "samples": 40}, "report": {"source": "rep.npz",
                              "samples": 40}, "how": "--data split by a seeded permutation (seed 0)"})


AUTO = {"auto": {
    "checks": [{"step": 1, "layers": 1, "data": "select", "top1_drop": 0.0, "rel_l2_error": 0.01, "ok": True,
                "reason": None, "speedup": 1.1, "bound": {"max_accuracy_drop": 1.2}},
               {"step": 2, "layers": 2, "data": "select", "top1_drop": 2.5, "rel_l2_error": 0.2, "ok": False,
                "reason": f"top-1 drop ≤ 6.1 over the budget {EVIL}", "speedup": 1.6,
                "bound": {"max_accuracy_drop": 6.1}}],
    "candidates": [{"layer": EVIL, "candidate": "bottleneck[rank_in=8]", "form": "1x1+5x5", "ranks": {"rank_in": 8},
                    "macs_before": 1_000_000, "macs_after": 400_000, "weight_rel_error": 0.3, "output_error": 0.1,
                    "dense_ms": 0.2, "ms": 0.1, "layer_speedup": 2.0, "cost": None, "status": "eligible"},
                   {"layer": "conv2", "candidate": "depthwise[multiplier=1]", "form": "dw5x5+pw", "ranks": {},
                    "macs_before": 1_000_000, "macs_after": 90_000, "weight_rel_error": 0.9, "output_error": None,
                    "dense_ms": 0.25, "ms": 0.3, "layer_speedup": 0.83, "cost": 3.5,
                    "status": "slower in ORT (layer speedup 0.83x < 1.05)"}],
    "chosen": {EVIL: {"candidate": "bottleneck[rank_in=8]", "form": "1x1+5x5", "ranks": {"rank_in": 8},
                      "layer_speedup": 2.0, "refit_layer_error": [0.12, 0.08]}},
}}


def make_report(m: dict[str, dict], *, metric: bool = False, certified: bool = True, message: str | None = None,
                macs: tuple[int | None, int | None] = (2_000_000, 1_200_000)) -> dict:
    m = {k.removeprefix("metric:"): v for k, v in m.items() if k.startswith("metric:") == metric}
    passes = (
        PassReport("fold_bn", "no_change", (), (), macs[0], macs[0], 30000, 30000, 0.0, None, None, None),
        PassReport("split5x5", "kept", (rewrite(EVIL), rewrite("conv2")), (NodeSkip("conv3", EVIL_REASON),),
                   macs[0], macs[1], 30000, 20000, 0.5, None, m["select:slight"],
                   m["report:slight"]["latency"]),
        PassReport("depthwise", "rolled_back", (rewrite("conv4", (400_000, 100_000)),), (),
                   macs[1], macs[1], 20000, 20000, 0.4, f"top-1 dropped 40.00 points {EVIL}",
                   m["select:worse"], m["report:worse"]["latency"]),
        PassReport("factorize", "no_change", (), (NodeSkip("conv5", "groups>1"), NodeSkip("conv6", "groups>1")),
                   macs[1], macs[1], 20000, 20000, 0.01, None, None, None),
    )
    return Report(
        model=f"models/{EVIL}.onnx", output="out/opt.onnx", passes=passes,
        settings={"strategy": "uniform", "ort": OrtSettings().to_dict(), "note": EVIL,
                  "budget": {"max_accuracy_drop": 2.0, "confidence": 0.95}},
        environment={"date": "2026-01-02T03:04:05+00:00", "python": "3.x", "os": EVIL},
        macs_before=macs[0], macs_after=macs[1], params_before=30000, params_after=20000,
        baseline=m["report:baseline"], final=m["report:slight"],
        budget=budget(certified, message), gate={"fail_under_speedup": 1.1, "passed": False, "reason": "too slow"},
        extra=copy.deepcopy(AUTO),
    ).to_dict()


def console_of(width: int, terminal_like: bool = True) -> Console:
    """A recording console ``width`` columns wide; ``terminal_like``: as on a terminal (prose wraps), else as
    in a pipe."""
    return Console(file=io.StringIO(), record=True, width=width, color_system=None, force_terminal=terminal_like,
                   emoji=False, highlight=False)


def terminal(report: dict, width: int, terminal_like: bool = True) -> str:
    console = console_of(width, terminal_like)
    render_table(report, console)
    return console.export_text()


# -- schema -----------------------------------------------------------------------------------------------


def test_full_report_validates(measurements: dict[str, dict]) -> None:
    for kw in ({}, {"metric": True}, {"macs": (None, None)}):
        report = make_report(measurements, **kw)
        validate_report(report)
        validate_report(json.loads(json.dumps(report, allow_nan=False)))
    validate_report(Report("m.onnx", None, (), {}, {}, 0, 0, 0, 0).to_dict())


def test_schema_is_draft_2020_12() -> None:
    import jsonschema

    schema = report_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("breakage", [
    lambda r: r["passes"][1].__setitem__("status", "maybe"),
    lambda r: r["passes"][2].__setitem__("rollback_reason", None),  # rolled back without a reason
    lambda r: r["passes"][1]["rewritten"][0].__setitem__("macs_after", -1),
    lambda r: r["passes"][1]["skipped"][0].pop("reason"),
    lambda r: r["baseline"]["accuracy"].__setitem__("top1_agreement", 101.0),
    lambda r: r["baseline"]["accuracy"].pop("cosine"),
    lambda r: r["final"]["latency"]["candidate"].__setitem__("repeats", 0),
    lambda r: r["final"].__setitem__("surprise", 1),
    lambda r: r.pop("macs_before"),
    lambda r: r.__setitem__("passes", {}),
])
def test_broken_reports_fail(measurements: dict[str, dict], breakage) -> None:  # noqa: ANN001
    import jsonschema

    report = copy.deepcopy(make_report(measurements))
    breakage(report)
    with pytest.raises(jsonschema.ValidationError):
        validate_report(report)


# -- terminal ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", ["labelled", "metric", "unknown MACs"])
def test_terminal_fits_the_width_and_cuts_no_number(measurements: dict[str, dict], width: int, kind: str) -> None:
    report = make_report(measurements, metric=kind == "metric", macs=(None, None) if kind == "unknown MACs"
                         else (2_000_000, 1_200_000))
    out = terminal(report, width)
    assert max(len(line) for line in out.splitlines()) <= width, out
    assert "…" not in out  # rich's mark of a cut cell
    final = report["final"]["accuracy"]
    shown_top1 = [] if final["labelled_top1"] is None else [f"{final['labelled_top1']:.2f}"]
    for shown in (interval(final["top1_drop_interval"], "+.2f"), interval(final["rel_l2_error_interval"], ".3g"),
                  f"{report['final']['latency']['speedup']:.2f}×", *shown_top1):
        assert shown in out, (shown, out)  # each figure and interval whole, on one line
    for header in ("top-1 drop", "rel. error", "speedup", "agree %"):
        assert header in out, (header, out)  # headers never broken into fragments
    if kind == "metric":
        assert "first_class drop" in out
        assert interval(final["metric_drop_interval"], "+.4g") in out
    if kind == "unknown MACs":
        assert "unknown" in out and "MACs: unknown → unknown (unknown)" in out
        assert not re.search(r"(^|\s)0 →|-\d[\d.]*[kMG]?\b.*MACs", out)


@pytest.mark.parametrize("width", WIDTHS)
def test_terminal_marks_the_data_each_row_is_on(measurements: dict[str, dict], width: int) -> None:
    out = terminal(make_report(measurements), width)
    assert "select" in out and "report" in out and "n=40" in out
    assert "original and final: measured once on the report data (40 samples), never used" in out.replace("\n", " ")
    assert "fold_bn" in out and "no change: fold_bn" in out.replace("\n", " ")


def test_terminal_verdict_says_certified_with_the_bound_and_the_samples(measurements: dict[str, dict]) -> None:
    report = make_report(measurements)
    out = terminal(report, 200, terminal_like=False)
    line = next(ln for ln in out.splitlines() if ln.startswith("verdict:"))
    assert "top-1 drop ≤ 2 points at 95% confidence: certified on 40 select samples" in line
    assert "upper bound: top-1 drop ≤ 1.5" in line
    acc = report["final"]["accuracy"]
    drop, iv = acc["top1_drop"], interval(acc["top1_drop_interval"], "+.2f")
    assert (f"report data (40 samples, never used to decide): {'within' if drop <= 2 else 'OVER'} the budget: "
            f"top-1 drop {drop:+.2f} points {iv}") in out
    assert "CI gate: speedup ≥ 1.1: FAILED (too slow)" in out


def test_terminal_verdict_says_why_not_certified(measurements: dict[str, dict]) -> None:
    why = "40 decision samples cannot certify --max-accuracy-drop 2.0 at 95%; it takes about 150 samples"
    out = terminal(make_report(measurements, certified=False, message=why), 200, terminal_like=False)
    assert "NOT certified on 40 select samples" in out and f"why: {why}" in out


def test_prose_is_one_line_in_a_pipe_and_wrapped_on_a_terminal(measurements: dict[str, dict]) -> None:
    why = "40 decision samples cannot certify --max-accuracy-drop 2.0 at 95% even for a rewrite that flips nothing"
    report = make_report(measurements, certified=False, message=why)
    piped = terminal(report, 80, terminal_like=False)
    line = next(ln for ln in piped.splitlines() if ln.startswith("why:"))
    assert len(line) > 80 and line == f"why: {why}"  # grep finds the whole event
    on_tty = terminal(report, 80)
    assert all(len(ln) <= 80 for ln in on_tty.splitlines())


def test_terminal_shows_markup_literally_and_layers_with_their_figures(measurements: dict[str, dict]) -> None:
    out = terminal(make_report(measurements), 200)
    assert EVIL in out  # rich markup in a node name is printed, not interpreted
    assert "factorize: 2 layers left alone: groups>1" in out
    row = next(ln for ln in out.splitlines() if ln.startswith(EVIL))
    assert "50.0 %" in row and "400k 0.40×" in row and "2.00×" in row and "0.08" in row  # share, MACs, speedup, error
    assert render_text(make_report(measurements)).startswith("convopt report\n\n")


def test_unlabelled_report_has_no_top1_columns(measurements: dict[str, dict]) -> None:
    report = Report("m.onnx", None, (), {}, {}, 10, 10, 1, 1, baseline=measurements["unlabelled"],
                    final=measurements["unlabelled"]).to_dict()
    validate_report(report)
    out = terminal(report, 120)
    assert "agree %" in out and "top-1 %" not in out and "top-1 drop" not in out
    # no latency was measured (and no column is all dashes): no speedup or ms columns either
    assert "| step | data | MACs | agree % | rel. error |" in render_markdown(report)


# -- Markdown ---------------------------------------------------------------------------------------------


def test_markdown_tables_keep_their_columns_and_intervals(measurements: dict[str, dict]) -> None:
    report = make_report(measurements)
    md = render_markdown(report)
    assert "<script" not in md and "<img" not in md and "&lt;script>alert(1)&lt;/script>" in md
    assert "\\| &amp; more" in md  # pipes in a reason cannot split a table
    lines = md.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            ncols = len(re.split(r"(?<!\\)\|", line))
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                assert len(re.split(r"(?<!\\)\|", row)) == ncols, row
    final = report["final"]["accuracy"]
    assert interval(final["top1_drop_interval"], "+.2f").replace("[", "\\[").replace("]", "\\]") in md
    assert "| depthwise rolled back | select n=40 |" in md
    for section in ("## Steps", "## Rewritten layers", "## Left alone, and why", "## Steps auto checked",
                    "## Settings"):
        assert section in md
    assert "**verdict: budget top-1 drop ≤ 2 points" in md


# -- HTML ---------------------------------------------------------------------------------------------------


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        (self.scripts if self._in_script else self.text).append(data)


def test_html_escapes_everything_from_the_model(measurements: dict[str, dict]) -> None:
    page = render_html(make_report(measurements))
    assert page.lower().count("<script") == 1 and "<img" not in page.lower()
    assert html.escape(EVIL) in page and html.escape(EVIL_REASON) in page
    parsed = Collector()
    parsed.feed(page)
    assert parsed.tags.count("script") == 1 and parsed.scripts == [SCRIPT] and "img" not in parsed.tags
    assert not any(name.startswith("on") for name, _ in parsed.attrs)
    text = "".join(parsed.text)
    assert EVIL in text and EVIL_REASON in text  # shown to the reader as text


def test_html_only_its_own_script_may_run() -> None:
    import base64
    import hashlib

    assert SCRIPT_HASH == base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    assert "default-src 'none'" in CSP and f"script-src 'sha256-{SCRIPT_HASH}'" in CSP
    assert "unsafe-inline" not in CSP.split("script-src")[1]


def test_html_is_self_contained_with_verdict_chart_tables_and_date(measurements: dict[str, dict]) -> None:
    report = make_report(measurements)
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page and "http://www.w3.org/2000/svg" in page
    parsed = Collector()
    parsed.feed(page)
    text = " ".join(parsed.text)
    for word in ("verdict: budget top-1 drop ≤ 2 points", "certified on 40 select samples", "2026-01-02T03:04:05",
                 "speedup vs the original (×, higher is faster)", "top-1 drop (points), higher is worse",
                 "budget 2", "Rewritten layers", "Left alone, and why", "Steps auto checked (select data)",
                 "Candidates auto considered (2; click a header to sort)", "the budget"):
        assert word in text, word
    # the settings are a readable table, not a JSON dump
    assert "strategy" in text and "uniform" in text and '{"' not in text.split("Settings")[1].split("role")[0]
    assert parsed.tags.count("svg") == 1 and page.count('class="sortable"') == 2
    assert 'data-points="6"' in page  # original, two auto checks, two passes, final


def test_chart_points_bars_and_budget(measurements: dict[str, dict]) -> None:
    report = make_report(measurements)
    (panel,) = chart_panels(report)
    assert panel.key == "max_accuracy_drop" and panel.limit == 2.0 and "top-1 drop (points)" in panel.ylabel
    kinds = [p.kind for p in panel.points]
    assert kinds == ["original", "check", "check-rejected", "pass", "pass-rolled-back", "final"]
    original, ok, rejected, _, _, final = panel.points
    assert (original.x, original.y, original.low) == (1.0, 0.0, None)
    assert (ok.x, ok.y, ok.low, ok.high) == (1.1, 0.0, 0.0, 1.2)  # one-sided bar up to the decision's bound
    assert (rejected.y, rejected.high) == (2.5, 6.1)
    acc = report["final"]["accuracy"]
    assert (final.y, [final.low, final.high]) == (acc["top1_drop"], acc["top1_drop_interval"])
    assert final.x == report["final"]["latency"]["speedup"]
    assert len(chart_points(report)) == 6


def test_chart_shows_uniform_passes_and_a_panel_per_limit(measurements: dict[str, dict]) -> None:
    report = make_report(measurements)
    report["extra"] = {}
    report["budget"]["limits"]["max_rel_error"] = 0.5
    panels = chart_panels(report)
    assert [p.key for p in panels] == ["max_accuracy_drop", "max_rel_error"]
    kinds = [p.kind for p in panels[1].points]
    assert kinds == ["original", "pass", "pass-rolled-back", "final"]
    slight = report["passes"][1]
    assert panels[1].points[1].x == slight["latency"]["speedup"]  # the report's timing run, not the decision's
    assert panels[1].points[1].y == slight["measurement"]["accuracy"]["rel_l2_error"]


def test_html_without_measurements_says_so(measurements: dict[str, dict]) -> None:
    report = make_report(measurements)
    report["extra"] = {}
    for m in (report["baseline"], report["final"]):
        m["latency"] = None
    for p in report["passes"]:
        p["latency"] = None
    page = render_html(report)
    assert "<svg" not in page and "No model has both an accuracy and a latency measurement" in page


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    ticks = nice_ticks(0.93, 1.61)
    assert ticks[0] <= 0.93 and ticks[-1] >= 1.61 and 4 <= len(ticks) <= 8
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1 and steps.pop() in (0.1, 0.2, 0.25, 0.5)


# -- two runs -----------------------------------------------------------------------------------------------


def test_comparison_shows_what_differs(measurements: dict[str, dict]) -> None:
    a = make_report(measurements)
    b = make_report(measurements, certified=False, message="too few samples")
    b["settings"]["budget"]["max_accuracy_drop"] = 3.0
    b["passes"][1]["rewritten"] = b["passes"][1]["rewritten"][:1]
    b["passes"][1]["rewritten"][0]["ranks"] = {"R": 4}
    grids = {g.title: g for g in comparison(a, b, ("a.json", "b.json"))}
    diff = {r[0].value: (r[1].value, r[2].value) for r in grids["settings that differ"].rows}
    assert diff == {"budget.max_accuracy_drop": ("2.0", "3.0")}
    bud = {r[0].value: (r[1].value, r[2].value) for r in grids["budget"].rows}
    assert bud["certified"] == ("yes", "no") and bud["message"] == ("–", "too few samples")
    layers = {r[0].value: (r[1].value, r[2].value) for r in grids["layer choices"].rows}
    assert layers[EVIL] == ("3x3·3x3 R=8", "3x3·3x3 R=4") and layers["conv2"] == ("3x3·3x3 R=8", "dense")
    final = {r[0].value: r[1].value for r in grids["final model (report data)"].rows}
    assert final["top-1 drop"].startswith(f"{a['final']['accuracy']['top1_drop']:+.2f} [")
    for width in WIDTHS:
        console = console_of(width)
        render_comparison(list(grids.values()), console)
        out = console.export_text()
        assert max(len(line) for line in out.splitlines()) <= width and "budget.max_accuracy_drop" in out
    md = render_comparison_markdown(list(grids.values()))
    assert md.startswith("# convopt report\n") and "&lt;script>" in md and "<script" not in md


def test_precisions_are_shown_with_the_written_one_marked(measurements: dict[str, dict]) -> None:
    from convopt.report import PrecisionRow

    base = make_report(measurements)
    final = base["final"]
    rows = (PrecisionRow("original", "fp32", base["baseline"]), PrecisionRow("original", "int8", measurements[
        "report:worse"]), PrecisionRow("optimized", "fp32", measurements["select:slight"]),
        PrecisionRow("optimized", "int8", final))
    report = {**base, "precisions": [r.__dict__ for r in rows]}
    validate_report(report)
    for width in WIDTHS:
        out = terminal(report, width)
        assert max(len(line) for line in out.splitlines()) <= width
        assert "optimized INT8" in out and "written" in out and "original INT8" in out
    assert "## Precisions (report data)" in render_markdown(report)
    kinds = [p.kind for p in chart_panels(report)[0].points]
    assert kinds.count("precision") == 2 and kinds.count("final") == 1  # original INT8 and optimized FP32
