"""`dvc plots show` and `dvc plots diff` write pages that render without a network: headless
Chromium, with every connection sent to a closed port, opens them and Vega draws each plot
dvc.yaml defines. Skipped when no Chromium is installed (`apt-get install chromium`).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import make_tiny_project, run

CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)

pytestmark = [
    pytest.mark.slow,  # a tiny training run, then a browser
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install chromium"),
]

# dvc.yaml's top-level plots, each drawn by Vega into its own div.
VEGA_PLOTS = ("Loss per epoch", "Accuracy per epoch", "Confusion matrix (test split)")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_dataset_server):
    path = make_tiny_project(tmp_path_factory.mktemp("project"), tiny_dataset_server)
    run(["dvc", "repro"], cwd=path)
    return path


def rendered_dom(page, profile) -> str:
    """The page's DOM once its scripts have run, in headless Chromium without a network."""
    command = [
        CHROMIUM,
        "--headless",
        "--disable-gpu",
        # Chromium refuses to run as root with its sandbox; the page is the test's own.
        "--no-sandbox",
        f"--user-data-dir={profile}",
        # Any request that leaves the machine goes to a closed port: a CDN script would not load.
        "--proxy-server=127.0.0.1:9",
        # Let Vega finish drawing before the DOM is dumped.
        "--virtual-time-budget=20000",
        "--dump-dom",
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout


def drawn_plots(dom: str) -> list[tuple[int, int]]:
    """The size of each canvas Vega drew into: vega-embed's containers hold one each once Vega has run."""
    canvases = re.findall(r'class="vega-embed[^"]*">\s*<div class="chart-wrapper"[^>]*>\s*<canvas ([^>]*)>', dom)
    return [tuple(int(re.search(rf'{side}="(\d+)"', canvas)[1]) for side in ("width", "height")) for canvas in canvases]


@pytest.mark.parametrize("command", [["dvc", "plots", "show"], ["dvc", "plots", "diff", "HEAD"]], ids=" ".join)
def test_the_written_page_draws_every_vega_plot_offline(project, tmp_path, command):
    shutil.rmtree(project / "dvc_plots", ignore_errors=True)
    run(command, cwd=project)
    page = project / "dvc_plots/index.html"
    html = page.read_text()
    assert "cdn.jsdelivr.net" not in html and "../plots/vega/vega.min.js" in html
    for title in VEGA_PLOTS:
        assert title in html
    dom = rendered_dom(page, tmp_path / "profile")
    sizes = drawn_plots(dom)
    assert len(sizes) == len(VEGA_PLOTS), dom[:2000]
    assert all(width > 100 and height > 100 for width, height in sizes), sizes
    # The PNG plots (samples, architecture, confusion matrix, learning curves) are there too.
    assert len(re.findall(r"<img ", dom)) >= 4
    # dvc_plots/ is output, never committed.
    run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=project)
