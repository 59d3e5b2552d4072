"""`transferbench report`: every table and figure, and the index page linking them with commands and versions."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from test_report_beyond import C, N, _write_run

from transferbench.cli import main

REF = Path("/work/shared/reference/paper-results")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(C), N // C)
    for seed in (0, 1):
        dense = rng.normal(size=(N, C)) + 2.5 * np.eye(C)[labels]
        _write_run(root, f"d{seed}", "dtd", "dense", 0.0, seed, dense, labels)
        for s in (0.8, 0.9):
            _write_run(root, f"a{s}-{seed}", "dtd", "acdc", s, seed, dense + rng.normal(size=dense.shape), labels)
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
    links = re.findall(r"\]\(([^)]+)\)", md)
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
