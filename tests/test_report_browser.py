"""The report renders in a real browser: headless Chromium shows the chart and the key numbers."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from modelpress.html_report import render_report

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PARETO_BLUE = (31, 119, 180)  # #1f77b4, the fill of a Pareto-optimal marker


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_headless_chromium_renders_the_chart_and_numbers(demo_run, tmp_path):
    from PIL import Image

    out = demo_run / "runs" / "demo"
    page = render_report(out)
    final = json.loads((out / "metrics.json").read_text())["models"]["final"]
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "<svg" in dom and "point-final" in dom
    assert f"{final['accuracy']:.3f}" in dom and f"{final['latency_ms']['p50']:.1f}" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=900,1100", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = Image.open(shot).convert("RGB").getdata()
    assert sum(1 for p in pixels if p == PARETO_BLUE) > 200  # the filled marker of the final model is drawn
