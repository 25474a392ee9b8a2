"""Fault injection, issue 15 row 13 and item 5: a type fuzzer over a real report.

A labelled report is taken from `convopt optimize ... --report` on the built-in example. Every value in it
(every key of every object, every item of every list, the top level included) is replaced in turn by values
of other types and ranges (a third of VALUES at each path, rotating, so each value meets every kind of
field), every object also loses each key and gains an unknown one. Each mutated report is
checked the way `convopt report` checks it (convopt.report_check) and, when accepted, rendered as table,
Markdown and HTML: every case must end in a rendering or an InputError, which the CLI turns into exit 0 or
2 — never 3. A sample of the cases goes through the real CLI as files, and so do damaged files (truncated,
NaN, deep nesting, huge integers, invalid UTF-8). The number of cases is printed ("report fuzz cases")."""
from __future__ import annotations

import copy
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from convopt import render
from convopt.cli import app
from convopt.errors import InputError
from convopt.models.example import example_data_path, example_model_path
from convopt.report_check import check_report

from tests.faults import RAW_FORBIDDEN, print_counts

runner = CliRunner()
CASES: Counter[str] = Counter()
VALUES: list[Any] = [None, True, 0, -1, 7, 1.5, -2.5, 2**62, 2**63, 1e308, "", "x", "\x1b[2J\u202e", [], [1, "a"],
                     [None], {}, {"k": [1]}]
CLI_EVERY = 151  # one mutated report in this many also goes through `convopt report` as a file


@pytest.fixture(scope="module")
def real_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("fuzz")
    r = runner.invoke(app, ["optimize", str(example_model_path()), "--data", str(example_data_path()), "--strategy",
                            "uniform", "--limit", "64", "--repeats", "3", "--warmup", "1", "--passes",
                            "factorize,depthwise", "-o", str(d / "ex.onnx"), "--report", str(d / "r.json"), "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((d / "r.json").read_text())
    assert rep["baseline"]["accuracy"]["labelled_top1"] is not None and rep["passes"], "want a labelled report"
    return rep


def _paths(v: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, (*path, i))


def _node(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _mutations(rep: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(name, mutated report) for every path: a third of VALUES in turn (the next third at the next path), each
    key of an object removed, an unknown key added. The report is changed in place and restored after each
    yield (a deep copy per case would cost more than checking it)."""
    for n, path in enumerate(_paths(rep)):
        where = "/".join(map(str, path)) or "(top)"
        if not path:
            for value in VALUES:
                yield f"(top)={value!r}", value
            continue
        parent, key = _node(rep, path[:-1]), path[-1]
        original = parent[key]
        for value in VALUES[n % 3::3]:
            parent[key] = value
            yield f"{where}={value!r}"[:80], rep
        parent[key] = original
        if isinstance(original, dict):
            for k in list(original):
                v = original.pop(k)
                yield f"{where} without {k}", rep
                original[k] = v
            original["zz_unknown"] = 1
            yield f"{where} + unknown key", rep
            del original["zz_unknown"]


def _render_all(doc: dict[str, Any], table: bool = True) -> None:
    texts = [render.render_markdown(doc), render.render_html(doc)]
    if table:  # rich's table layout is the slow one: drawn for a share of the cases
        buf = io.StringIO()
        render.render_table(doc, Console(file=buf, width=120, emoji=False))
        texts.append(buf.getvalue())
    for text in texts:
        for ch in RAW_FORBIDDEN:
            assert ch not in text


def test_type_fuzzer_over_a_real_report(real_report: dict[str, Any], tmp_path: Path) -> None:
    check_report(real_report, "real")
    _render_all(real_report)
    assert render.render_text(real_report).startswith("convopt report\n")
    rep = copy.deepcopy(real_report)
    for i, (name, doc) in enumerate(_mutations(rep)):
        try:
            check_report(doc, "mutated")
        except InputError as exc:
            msg = str(exc)
            assert "\n" not in msg and msg.startswith("mutated is not a valid convopt report: "), (name, msg)
            CASES["refused (exit 2)"] += 1
        else:
            try:
                _render_all(doc, table=i % 7 == 0)
            except Exception as exc:  # noqa: BLE001  (the point: nothing accepted may crash a renderer)
                pytest.fail(f"{name}: accepted, then {type(exc).__name__}: {exc}")
            CASES["rendered (exit 0)"] += 1
        if i % CLI_EVERY == 0:
            f = tmp_path / "m.json"
            f.write_text(json.dumps(doc, ensure_ascii=False))
            fmt = ("table", "md", "html")[i // CLI_EVERY % 3]
            r = runner.invoke(app, ["report", str(f), "--format", fmt])
            assert r.exit_code in (0, 2), (name, fmt, r.output)
            assert r.exit_code == 0 or r.output.count("\n") == 1, (name, r.output)
            CASES[f"through the CLI (exit {r.exit_code})"] += 1
    assert rep == real_report, "the mutations were not all undone"
    assert CASES["refused (exit 2)"] > 1000 and CASES["rendered (exit 0)"] > 200, dict(CASES)


@pytest.mark.parametrize("name,content", [
    ("empty", b""), ("truncated", b'{"model": "m", "passes": ['), ("nan", b'{"model": NaN}'),
    ("infinity-literal", b'{"model": 1e999}'), ("deep", b"[" * 100000 + b"]" * 100000),
    ("deep-ok-json", b'{"extra": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"}"),
    ("huge-int", b'{"macs_before": ' + b"9" * 400 + b"}"), ("latin1", b'{"model": "\xff\xfe"}'),
    ("utf8-bom", b'\xef\xbb\xbf{"model": "m"}'), ("list", b"[1, 2, 3]"), ("string", b'"report"'),
    ("passes-not-list", b'{"passes": {}}'), ("nul", b'{"model": "a\\u0000b"}'),
])
def test_damaged_report_files_exit_2_with_one_line(tmp_path: Path, name: str, content: bytes) -> None:
    f = tmp_path / "r.json"
    f.write_bytes(content)
    for fmt in ("table", "md", "html"):
        r = runner.invoke(app, ["report", str(f), "--format", fmt])
        assert r.exit_code == 2, (name, fmt, r.output)
        assert r.output.count("\n") == 1 and r.output.startswith("error: "), (name, r.output)
        CASES["damaged file (exit 2)"] += 1


def test_print_counts(capsys: pytest.CaptureFixture[str]) -> None:
    if not CASES:
        pytest.skip("the cases above were deselected")
    print_counts(capsys, "report fuzz", CASES)
