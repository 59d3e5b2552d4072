"""`transferbench report`: every table and figure, and the index page linking them with commands and versions."""

from __future__ import annotations

import re
from importlib import metadata

import numpy as np
import pytest
from fixtures_data import PAPER_RESULTS
from test_report_beyond import C, N, _write_run

from transferbench.cli import main

REF = PAPER_RESULTS


def write_dtd_runs(root, seed: int, own_method: str | None = None) -> None:
    """Two seeds of dense and AC/DC 80%/90% on dtd (and of ``own_method``, closer to dense), logits drawn from
    ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), N // C)
    for run_seed in (0, 1):
        dense = rng.normal(size=(N, C)) + 2.5 * np.eye(C)[labels]
        _write_run(root, f"d{run_seed}", "dtd", "dense", 0.0, run_seed, dense, labels)
        for s in (0.8, 0.9):
            _write_run(root, f"a{s}-{run_seed}", "dtd", "acdc", s, run_seed, dense + rng.normal(size=dense.shape),
                       labels)
            if own_method:
                _write_run(root, f"m{s}-{run_seed}", "dtd", own_method, s, run_seed,
                           dense + 0.5 * rng.normal(size=dense.shape), labels)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    write_dtd_runs(root, 3)
    return root


def test_report_page(capsys, store):
    if not REF.is_dir():
        pytest.skip(f"the paper's result files are not at {REF}")
    ref = REF / "linear_transfer_results.txt"
    assert main(["report", "--results", str(store), "--reference", str(ref)]) == 0
    md = (store / "report" / "index.md").read_text()
    page = (store / "report" / "index.html").read_text()
    for cmd in (
        f"transferbench collect --results {store} --reference {ref}",
        f"transferbench compare --results {store} --reference {ref}",
        f"transferbench report beyond --results {store}",
    ):
        assert cmd in md and cmd in page
    for pkg in ("transferbench", "torch", "pandas", "numpy", "seaborn"):
        assert f"| {pkg} | {metadata.version(pkg)} |" in md
    assert "| python |" in md
    links = [link for link in re.findall(r"\]\(([^)]+)\)", md) if not link.startswith("#")]  # not the contents
    targets = {(store / "report" / link).resolve() for link in links}
    assert all(t.is_file() for t in targets), [t for t in targets if not t.is_file()]
    names = {t.name for t in targets}
    assert {
        "leaderboard_resnet50_linear_ours_vs_paper.md",
        "compare.csv",
        "beyond.csv",
        "beyond_resnet50_linear.png",
        "resnet50_linear_ours_vs_paper_accuracy_vs_sparsity.png",
        "runs.parquet",
    } <= names
    imgs = re.findall(r"<img src='([^']+)'", page)
    assert imgs and all((store / "report" / i).is_file() for i in imgs)
    assert len(imgs) == sum(1 for n in names if n.endswith(".png"))
    assert "<table" in page and "outside seed noise" in page


def test_report_bad_input(capsys, tmp_path):
    code = main(["report", "--results", str(tmp_path / "missing")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln[:4].isdigit()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "--results" in err[0]


def test_report_versions_inline_leaderboards_and_incomplete_mean(tmp_path):
    import json

    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(C), N // C)
    installs = [{"transferbench": "0.1.0", "torch": "2.3.0"}, {"transferbench": "0.1.0", "torch": "2.4.1"}]
    for seed in (0, 1, 2):
        dense = rng.normal(size=(N, C)) + 2.5 * np.eye(C)[labels]
        _write_run(tmp_path, f"d{seed}", "dtd", "dense", 0.0, seed, dense, labels)
        _write_run(tmp_path, f"a{seed}", "dtd", "acdc", 0.9, seed, dense, labels)
        if seed < 2:  # acdc misses pets: its row has a mean only with --allow-incomplete-mean
            _write_run(tmp_path, f"dp{seed}", "pets", "dense", 0.0, seed, dense, labels)
    for i, path in enumerate(sorted((tmp_path / "runs").glob("*/result.json"))):
        rec = json.loads(path.read_text())
        rec["versions"] = installs[0] if i < 6 else installs[1]
        path.write_text(json.dumps(rec))
    assert main(["report", "--results", str(tmp_path), "--allow-incomplete-mean"]) == 0
    md = (tmp_path / "report" / "index.md").read_text()
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"transferbench collect --results {tmp_path} --allow-incomplete-mean" in md
    # the distinct versions of the records, with how many runs each
    assert "## Versions in the run records" in md
    assert "| 6 | 2.3.0 | 0.1.0 |" in md and "| 2 | 2.4.1 | 0.1.0 |" in md
    assert "<td>6</td><td>2.3.0</td><td>0.1.0</td>" in page
    # the leaderboard itself in the page, not only a link; its acdc row has a mean over the one task it has
    board = (tmp_path / "leaderboards" / "leaderboard_resnet50_linear.md").read_text()
    acdc = next(line for line in board.splitlines() if line.startswith("| acdc |"))
    mean_cell = [c.strip() for c in acdc.split("|")][-3]
    assert mean_cell != "—"
    assert "<h3 id='leaderboard_resnet50_linear'>leaderboard_resnet50_linear</h3>" in page and "<td>acdc</td>" in page
    assert f"<td>{mean_cell.replace('**', '')}</td>" in page.replace("<b>", "").replace("</b>", "")


def test_markdown_html():
    from transferbench.report.index import markdown_html

    page = markdown_html("| a | b |\n|:--|--:|\n| x | **1.0** (n=2) |\n\n_a note_\n\n**Warning:** w <x>\n")
    assert page == ("<div class='scroll'><table><tr><th>a</th><th>b</th></tr><tr><td>x</td><td><b>1.0</b> (n=2)</td>"
                    "</tr></table></div>\n"
                    "<p><em>a note</em></p>\n<p><b>Warning:</b> w &lt;x&gt;</p>")
