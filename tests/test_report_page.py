"""The report page as a reader sees it: own results first, a table of contents whose links land, beyond-accuracy
tables in % as the leaderboards, versions at the end; and, in a headless browser, a page no wider than a 1400 px
window (long commands wrap, wide tables scroll inside the page)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html import unescape

import numpy as np
import pytest
from fixtures_data import PAPER_RESULTS
from test_report_index import write_dtd_runs

from transferbench.cli import main

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
WIDTH = 1400


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A store of our own runs (dense, acdc and an own method `mine` on dtd) reported with the paper's linear
    ResNet50 and MobileNet results when they are there; returns (root, index.md text, index.html text)."""
    root = tmp_path_factory.mktemp("page") / "a_results_folder_with_a_rather_long_name_to_wrap"
    write_dtd_runs(root, 7, own_method="mine")
    args = ["report", "--results", str(root), "--label", "mine=Our method"]
    if PAPER_RESULTS.is_dir():  # the mobilenet file sorts before resnet50: it must still come after our results
        args += ["--reference", *(str(PAPER_RESULTS / f) for f in ("linear_mobilenet_transfer_results.txt",
                                                                   "linear_transfer_results.txt"))]
    assert main(args) == 0
    return root, (root / "report" / "index.md").read_text(), (root / "report" / "index.html").read_text()


def test_contents_links_land_and_versions_come_last(page):
    _, md, html = page
    ids = set(re.findall(r" id='([^']+)'", html))
    links = re.findall(r"<nav>.*?</nav>", html, re.S)[0]
    targets = re.findall(r"href='#([^']+)'", links)
    assert {"collected-runs-and-leaderboards", "figures", "beyond-accuracy", "versions"} <= set(targets)
    assert set(targets) <= ids  # every entry of the contents lands on a heading
    headings = re.findall(r"<h2 id='([^']+)'>", html)
    assert headings[0] == "contents" and headings[-1] == "versions"
    assert html.index("<th>package</th>") > html.index("id='beyond-accuracy'")  # the versions table at the end
    md_headings = re.findall(r"^## (.+)$", md, re.M)
    assert md_headings[0] == "Contents" and md_headings[-1] == "Versions"
    assert "- [Beyond accuracy](#beyond-accuracy)" in md


def test_own_results_before_the_papers(page):
    _, md, html = page
    if not PAPER_RESULTS.is_dir():
        pytest.skip(f"the paper's result files are not at {PAPER_RESULTS}")
    boards = re.findall(r"<h3 id='(leaderboard_[^']+)'>", html)
    assert boards == ["leaderboard_resnet50_linear_ours_vs_paper", "leaderboard_mobilenet_linear_paper"]
    figures = re.findall(r"<img src='\.\./figures/([^']+)\.png'", html)
    ranks = [0 if "paper" not in f else 1 if "ours_vs_paper" in f else 2 for f in figures]
    assert ranks == sorted(ranks) and ranks[0] < 2 and ranks[-1] == 2  # ours (vs the paper), then the paper's
    assert md.index("leaderboard_resnet50_linear_ours_vs_paper.md") < md.index("leaderboard_mobilenet_linear_paper")


def test_beyond_accuracy_is_a_table_in_percent(page):
    root, _, html = page
    section = html[html.index("id='beyond-accuracy'"):html.index("id='versions'")]
    cells = [_text(c) for c in re.findall(r"<td>(.*?)</td>", section)]
    header = [_text(c) for c in re.findall(r"<th>(.*?)</th>", section)]
    assert header[:8] == ["arch", "mode", "task", "method", "sparsity", "seeds", "Δtop1", "churn"]
    import pandas as pd

    cells_csv = pd.read_csv(root / "beyond" / "beyond.csv")
    churn = cells_csv.loc[(cells_csv["method"] == "mine") & (cells_csv["sparsity"] == 0.8), "churn"].iloc[0]
    assert f"{churn * 100:.2f}" in cells  # the fraction in the CSV, in % with two decimals on the page
    assert not any(re.fullmatch(r"0\.\d{3,}", c) for c in cells)  # no raw fractions
    assert "80%" in cells and "<div class='scroll'><table>" in section


def test_commands_wrap(page):
    _, _, html = page
    assert re.search(r"pre\{[^}]*white-space:pre-wrap", html) and "overflow-wrap:anywhere" in html
    assert "--label 'mine=Our method'" in unescape(html)  # the page's command reproduces the labels


def _text(cell: str) -> str:
    return re.sub(r"<[^>]+>", "", cell).strip()


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.mark.slow
@pytest.mark.skipif(_browser() is None, reason="no headless browser: apt-get install chromium-headless-shell "
                    "(or chromium) to check the page's width")
def test_page_fits_a_1400px_window(page, tmp_path):
    root, _, html = page
    probe = root / "report" / "_width_probe.html"  # beside index.html, so that its relative links resolve
    probe.write_text(html.replace("</body>", "<script>window.addEventListener('load', () => document.body"
                                  ".setAttribute('data-scroll-width', document.documentElement.scrollWidth))"
                                  "</script></body>"))
    base = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={WIDTH},1000"]
    try:
        dom = subprocess.run([*base, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        shot = tmp_path / "page.png"
        subprocess.run([*base, f"--screenshot={shot}", (root / "report" / "index.html").as_uri()],
                       capture_output=True, timeout=120, check=True)
    finally:
        probe.unlink()
    width = int(re.search(r'data-scroll-width="(\d+)"', dom).group(1))
    assert 0 < width <= WIDTH, f"the page is {width} px wide in a {WIDTH} px window"
    from PIL import Image

    with Image.open(shot) as png:
        assert png.size == (WIDTH, 1000)
        assert len(np.unique(np.asarray(png.convert("L")))) > 10  # something was drawn, not a blank page


def test_labels_reach_the_compact_tables(page):
    root, _, html = page
    compact = sorted((root / "leaderboards").glob("leaderboard_resnet50_linear*_compact.tex"))
    assert compact and all("Our method" in p.read_text() for p in compact)
    assert "transferbench collect" in unescape(html) and "--label 'mine=Our method'" in unescape(html)
