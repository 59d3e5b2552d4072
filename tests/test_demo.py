"""`transferbench demo` end to end (the quick plan: same code paths, fewer methods and epochs)."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest

from transferbench.demo import DemoPlan, run_demo
from transferbench.report import collect, leaderboard

pytestmark = pytest.mark.slow


def test_quick_demo_builds_upstream_transfers_and_reports(tmp_path):
    before = os.environ.get("TRANSFERBENCH_CHECKPOINTS")
    plan = DemoPlan.quick()
    outputs = run_demo(tmp_path, plan)
    assert os.environ.get("TRANSFERBENCH_CHECKPOINTS") == before  # the user's registry is left alone
    assert (tmp_path / "checkpoints" / "local.yaml").exists()

    runs = collect(tmp_path).runs
    n_checkpoints = 1 + len(plan.methods) * len(plan.sparsities)
    assert len(runs) == n_checkpoints * len(plan.tasks) * len(plan.seeds) * 2
    chance = 1 / 10  # digits
    assert (runs["top1"] > 3 * chance).all(), runs.loc[runs["top1"] <= 3 * chance, ["method", "mode", "top1"]]

    for mode in ("linear", "full"):
        table = leaderboard(runs, "resnet_tiny", mode).table
        means = table[("digits", "mean")]
        assert means.nunique() > 1  # methods differ measurably: no constant column
        assert set(table.index.get_level_values(0)) == {"dense", *plan.methods}
    assert {p.suffix for p in outputs["figures"]} == {".png", ".pdf"}
    assert all(p.stat().st_size > 5000 for p in outputs["figures"])
    assert any("upstream_vs_transfer" in p.name for p in outputs["figures"])  # upstream top-1 is recorded

    start = time.perf_counter()  # a second demo finds every model and record and only redraws the report
    run_demo(tmp_path, plan)
    assert time.perf_counter() - start < 30
    assert len(collect(tmp_path).runs) == len(runs)
    assert isinstance(pd.read_parquet(tmp_path / "runs.parquet"), pd.DataFrame)
