"""Screenshot a convopt HTML report in headless Chromium (the picture in bench/results/report.png).

    python bench/report_png.py REPORT.json [OUT.png]

Renders REPORT.json as HTML (in a temporary folder), asks Chromium for the page's height (the page's own
script records it in <html data-height>), then takes a full-page screenshot 1280 px wide. Needs Chromium
(Debian: apt-get install chromium). The report in bench/results/report.png came from

    convopt optimize ../shared/models/squeezenet1.1.onnx --data ../shared/data/imagenet-sample \\
        --preprocess caffe --labels ../shared/data/imagenet-sample/labels.csv --max-accuracy-drop 3 \\
        --threads 1 --limit 1000 --report squeezenet.json
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from convopt.render import render_html
from convopt.report_check import read_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--hide-scrollbars"]


def chromium(*args: str) -> str:
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        sys.exit("no Chromium found: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="convopt-chromium-") as profile:
        r = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                           timeout=180)
    if r.returncode != 0:
        sys.exit(f"chromium failed: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout


def main(report: Path, png: Path, width: int = 1280) -> None:
    with tempfile.TemporaryDirectory(prefix="convopt-page-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(render_html(read_report(report)), encoding="utf-8")
        dom = chromium(f"--window-size={width},1000", "--dump-dom", page.as_uri())
        html_tag = re.search(r"<html([^>]*)>", dom)
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', html_tag.group(1) if html_tag else ""))
        if attrs.get("data-ready") != "1" or "data-errors" in attrs:
            sys.exit(f"the page's script did not run cleanly: {json.dumps(attrs)}")
        height = int(attrs["data-height"]) + 16
        chromium(f"--window-size={width},{height}", f"--screenshot={png.resolve()}", page.as_uri())
    print(f"wrote {png} ({width}×{height}, {attrs['data-points']} chart points)")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) == 3 else "bench/results/report.png"))
