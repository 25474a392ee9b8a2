"""The HTML report in a real browser (headless Chromium): the page's script runs under its Content-Security-
Policy without errors, the chart holds the expected points, a sortable table sorts, and a script that is not the
page's own does not run. Skipped when no Chromium is installed (Debian: apt-get install chromium)."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from convopt.render import chart_points, render_html
from convopt.render.layers import candidate_grid
from tests.test_render import build_measurements, make_report

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed (apt-get install chromium)")


def dump_dom(url: str) -> str:
    """The DOM after the page's scripts ran, as headless Chromium serializes it."""
    with tempfile.TemporaryDirectory(prefix="convopt-chromium-") as profile:
        r = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", url],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("<"), r.stderr[-2000:]
    return r.stdout


def html_attrs(dom: str) -> dict[str, str]:
    tag = re.match(r"(?:<!DOCTYPE html>\s*)?<html([^>]*)>", dom)
    assert tag, dom[:300]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag.group(1)))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    report = make_report(build_measurements())
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(render_html(report), encoding="utf-8")
    return path, report


def test_the_page_runs_its_script_without_errors_and_charts_every_point(page: tuple[Path, dict]) -> None:
    path, report = page
    dom = dump_dom(path.as_uri())
    attrs = html_attrs(dom)
    assert attrs.get("data-ready") == "1" and "data-errors" not in attrs, attrs
    expected = len(chart_points(report))
    assert expected == 6 and attrs["data-points"] == str(expected)
    assert len(re.findall(r'<g class="pt [\w-]+"', dom)) == expected
    assert int(attrs["data-height"]) > 600


def test_a_sortable_table_sorts(page: tuple[Path, dict]) -> None:
    path, report = page
    grid = candidate_grid(report)
    col = [c.header for c in grid.columns].index("layer speedup")
    dom = dump_dom(path.as_uri() + f"#sort=1:{col}")  # table 0: rewritten layers, table 1: candidates
    table = dom.split('<table class="sortable">')[2].split("</table>")[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1])
    keys = [float(re.findall(r"<td[^>]*?data-sort=\"([^\"]+)\"|<td[^>]*>", row)[col] or "nan") for row in rows]
    speedups = sorted(float(c["layer_speedup"]) for c in report["extra"]["auto"]["candidates"])
    assert keys == pytest.approx(speedups) and 'aria-sort="ascending"' in table.split("<tbody>")[0]


def test_a_script_that_is_not_the_pages_own_does_not_run(page: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = page
    html = path.read_text(encoding="utf-8")
    injected = html.replace("</body>", '<script>document.documentElement.setAttribute("data-injected", "1")'
                                      "</script></body>")
    (tmp_path / "injected.html").write_text(injected, encoding="utf-8")
    attrs = html_attrs(dump_dom((tmp_path / "injected.html").as_uri()))
    assert attrs.get("data-ready") == "1" and "data-injected" not in attrs  # the CSP allows the page's hash only
