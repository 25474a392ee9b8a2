"""Rendering reports (terminal, Markdown, HTML) and the report JSON Schema."""
from __future__ import annotations

import copy
import html
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from rich.console import Console

from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.ort import OrtSettings
from convopt.render import (
    chart_points, render_html, render_markdown, render_table, report_schema, validate_report,
)
from convopt.report import NodeRewrite, NodeSkip, PassReport, Report
from tests.test_measure_evaluator import with_bias
from tests.test_measure_helpers import classifier_weights, tiny_classifier

EVIL = "<script>alert(1)</script>"
EVIL_REASON = "weight is not constant <img src=x onerror=alert(2)> | & more"


@pytest.fixture(scope="module")
def measurements() -> dict[str, dict]:
    """Real Measurement dicts from an Evaluator on the tiny classifier (labelled and not)."""
    x = np.random.default_rng(7).normal(size=(12, 3, 8, 8)).astype(np.float32)
    settings = OrtSettings(warmup=1, repeats=3, batch_size=4, threads=1)
    probe = Evaluator(tiny_classifier("N"), EvalData({"X": x}, None, "probe"), settings, measure_latency=False)
    labels = probe.reference[0].argmax(axis=1)
    labels[:2] = (labels[:2] + 1) % 4
    ev = Evaluator(tiny_classifier("N"), EvalData({"X": x}, labels, f"data/{EVIL}.npz"), settings)
    _, b = classifier_weights()
    worse = b.copy()
    worse[3] += 100.0
    return {
        "baseline": ev.baseline().to_dict(),
        "same": ev.measure(tiny_classifier("N"), "pass a").to_dict(),
        "worse": ev.measure(with_bias(tiny_classifier("N"), worse), "pass b").to_dict(),
        "unlabelled": probe.baseline().to_dict(),
    }


def rewrite(node: str, macs: tuple[int, int] = (1_000_000, 400_000)) -> NodeRewrite:
    return NodeRewrite(node=node, kernel=(5, 5), channels_in=16, channels_out=32, ranks={"R": 8},
                       macs_before=macs[0], macs_after=macs[1], params_before=12800, params_after=5120,
                       weight_rel_error=0.0123, new_nodes=(f"{node}/split5x5/a", f"{node}/split5x5/b"),
                       form="3x3·3x3")


def make_report(m: dict[str, dict]) -> dict:
    passes = (
        PassReport("split5x5", "kept", (rewrite(EVIL), rewrite("conv2")), (NodeSkip("conv3", EVIL_REASON),),
                   2_000_000, 1_200_000, 30000, 20000, 0.5, None, m["same"]),
        PassReport("depthwise", "rolled_back", (rewrite("conv4", (400_000, 100_000)),), (),
                   1_200_000, 900_000, 20000, 15000, 0.4, f"top-1 dropped 40.00 points {EVIL}", m["worse"]),
        PassReport("factorize", "no_change", (), (NodeSkip("conv5", "groups>1"), NodeSkip("conv6", "groups>1")),
                   1_200_000, 1_200_000, 20000, 20000, 0.01, None, None),
    )
    return Report(
        model=f"models/{EVIL}.onnx", output="out/opt.onnx", passes=passes,
        settings={"ort": OrtSettings().to_dict(), "note": EVIL}, environment={"python": "3.x", "os": EVIL},
        macs_before=2_000_000, macs_after=1_200_000, params_before=30000, params_after=20000,
        baseline=m["baseline"], final=m["same"], gate={"min_speedup": 1.1, "passed": False},
    ).to_dict()


# -- schema -----------------------------------------------------------------------------------------------


def test_full_report_validates(measurements: dict[str, dict]) -> None:
    report = make_report(measurements)
    validate_report(report)
    validate_report(json.loads(json.dumps(report, allow_nan=False)))
    minimal = Report("m.onnx", None, (), {}, {}, 0, 0, 0, 0).to_dict()
    validate_report(minimal)


def test_schema_is_draft_2020_12() -> None:
    import jsonschema

    schema = report_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("breakage", [
    lambda r: r["passes"][0].__setitem__("status", "maybe"),
    lambda r: r["passes"][1].__setitem__("rollback_reason", None),  # rolled back without a reason
    lambda r: r["passes"][0]["rewritten"][0].__setitem__("macs_after", -1),
    lambda r: r["passes"][0]["skipped"][0].pop("reason"),
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


def test_validate_without_jsonschema_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from convopt.report_check import _validator

    _validator.cache_clear()  # the validator is built once per process
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    try:
        with pytest.raises(ImportError, match="pip install"):
            validate_report({})
    finally:
        _validator.cache_clear()


# -- HTML ---------------------------------------------------------------------------------------------------


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_escapes_everything_from_the_model(measurements: dict[str, dict]) -> None:
    page = render_html(make_report(measurements))
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert html.escape(EVIL) in page and html.escape(EVIL_REASON) in page
    parsed = Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert not any(name.startswith("on") for name, _ in parsed.attrs)
    text = "".join(parsed.text)
    assert EVIL in text and EVIL_REASON in text  # shown to the reader as text


def test_html_is_self_contained_with_tables_and_chart(measurements: dict[str, dict]) -> None:
    page = render_html(make_report(measurements))
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    parsed = Collector()
    parsed.feed(page)
    assert parsed.tags.count("table") >= 4 and "svg" in parsed.tags
    assert parsed.tags.count("circle") == 3  # baseline, split5x5, depthwise (factorize was not measured)
    text = " ".join(parsed.text)
    for word in ("split5x5", "depthwise", "factorize", "rolled_back", "no_change", "labelled top-1 (%)",
                 "speedup vs original"):
        assert word in text


def test_chart_points_prefer_labelled_accuracy_then_agreement(measurements: dict[str, dict]) -> None:
    report = make_report(measurements)
    label, points = chart_points(report)
    assert label == "labelled top-1 (%)"
    assert [p[0] for p in points] == ["original", "split5x5", "depthwise"]
    assert points[0][2] == 1.0 and points[0][3] == measurements["baseline"]["accuracy"]["labelled_top1"]
    assert points[2][3] == measurements["worse"]["accuracy"]["labelled_top1"]
    for m in (report["baseline"], *[p["measurement"] for p in report["passes"] if p["measurement"]]):
        m["accuracy"]["labelled_top1"] = None
    label, points = chart_points(report)
    assert label == "top-1 agreement (%)" and points[0][3] == 100.0


def test_html_without_latency_says_so(measurements: dict[str, dict]) -> None:
    report = make_report(measurements)
    for m in (report["baseline"], report["final"], *[p["measurement"] for p in report["passes"] if p["measurement"]]):
        m["latency"] = None
    page = render_html(report)
    assert "<svg" not in page and "No pass has both an accuracy and a latency measurement" in page


# -- Markdown and terminal ------------------------------------------------------------------------------------


def test_markdown_tables(measurements: dict[str, dict]) -> None:
    md = render_markdown(make_report(measurements))
    assert "<script" not in md and "<img" not in md and "&lt;script>alert(1)&lt;/script>" in md
    assert "\\| &amp; more" in md  # pipes in a reason cannot split the table
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| pass | status"))
    ncols = header.count(" | ") + 1
    table = lines[lines.index(header):]
    table = table[:next(i for i, line in enumerate(table) if not line.startswith("|"))]
    assert len(table) == 2 + 5  # header, rule, original, 3 passes, final
    assert all(len(re.split(r"(?<!\\)\|", row)) - 2 == ncols for row in table)
    assert "| depthwise | rolled_back | 1 | 0 | 900k (0.75×) |" in md
    assert "| final |" in md and "1.2M (0.60×)" in md
    assert "## Rewritten nodes" in md and "## Skipped nodes" in md


def test_terminal_table_shows_passes_nodes_and_markup_literally(measurements: dict[str, dict]) -> None:
    console = Console(record=True, width=250, color_system=None)
    render_table(make_report(measurements), console)
    out = console.export_text()
    for word in ("split5x5", "kept", "rolled_back", "no_change", "original", "final", "top-1 %", "agreement %"):
        assert word in out
    assert f"split5x5: {EVIL}  5×5 16→32" in out  # rich markup in a node name is printed, not interpreted
    assert "factorize: skipped groups>1 ×2" in out
    assert f"data: data/{EVIL}.npz\n" in out
    assert "1M→400k (0.40×)" in out


def test_unlabelled_report_has_no_top1_column(measurements: dict[str, dict]) -> None:
    report = Report("m.onnx", None, (), {}, {}, 10, 10, 1, 1, baseline=measurements["unlabelled"],
                    final=measurements["unlabelled"]).to_dict()
    validate_report(report)
    console = Console(record=True, width=200, color_system=None)
    render_table(report, console)
    out = console.export_text()
    assert "agreement %" in out and "top-1 %" not in out
    assert "| pass | status | rewritten | skipped | MACs | params | agreement % |" in render_markdown(report)
