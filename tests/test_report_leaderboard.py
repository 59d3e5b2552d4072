"""Leaderboards: the mean over tasks with uneven seed counts, the dense-row warning, sources per solver."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from fixtures_data import PAPER_RESULTS

from transferbench.report import leaderboard, write_leaderboards
from transferbench.report.collect import runs_frame
from transferbench.report.leaderboard import MEAN, group_sources
from transferbench.report.select import Group

REF = PAPER_RESULTS


def _runs(cells: dict[tuple[str, float, str], list[float]], source: str = "ours", solver: str = "sgd",
          mode: str = "linear") -> pd.DataFrame:
    rows = []
    for (method, sparsity, task), values in cells.items():
        for seed, value in enumerate(values):
            rows.append({"run_key": f"{source}-{solver}-{method}-{sparsity}-{task}-{seed}", "task": task,
                         "method": method, "arch": "resnet50", "mode": mode, "seed": seed,
                         "target_sparsity": sparsity, "primary": value, "top1": value, "solver": solver})
    return runs_frame(rows, source=source)


def test_mean_over_tasks_with_uneven_seeds():
    cells = {("dense", 0.0, "a"): [0.80, 0.82, 0.84], ("dense", 0.0, "b"): [0.60, 0.61, 0.65, 0.62],
             ("acdc", 0.9, "a"): [0.70, 0.74], ("acdc", 0.9, "b"): [0.50, 0.52, 0.57]}
    lb = leaderboard(_runs(cells), "resnet50", "linear")
    # by hand: per-task means and sample variances in %, then sqrt(s_a² + s_b²)/2
    m_a, m_b = 100 * (0.70 + 0.74) / 2, 100 * (0.50 + 0.52 + 0.57) / 3
    var_a = ((70 - m_a) ** 2 + (74 - m_a) ** 2) / 1
    var_b = ((50 - m_b) ** 2 + (52 - m_b) ** 2 + (57 - m_b) ** 2) / 2
    mean, std, n = lb.cell(("acdc", 0.9), MEAN)
    assert mean == pytest.approx((m_a + m_b) / 2)
    assert std == pytest.approx(math.sqrt(var_a + var_b) / 2)
    assert lb.seed_range(("acdc", 0.9), MEAN) == (2, 3) and n == 2
    md = lb.to_markdown()
    assert f"{(m_a + m_b) / 2:.2f} ± {math.sqrt(var_a + var_b) / 2:.2f} (n=2–3)" in md
    assert "n=0" not in md and not lb.warnings


@pytest.mark.skipif(not REF.is_dir(), reason=f"the paper's result files are not at {REF}")
def test_the_papers_full_resnet50_means_have_seed_counts():
    from transferbench.report.reference import read_reference

    lb = leaderboard(read_reference(REF / "full_transfer_results.txt"), "resnet50", "full", source="paper")
    md = lb.to_markdown()
    assert "(n=0)" not in md
    assert lb.seed_range(("acdc", 0.8), MEAN) == (3, 4)  # one task has a fourth seed
    assert (lb.table[(MEAN, "n")] >= 3).all() and lb.table[(MEAN, "std")].notna().all()


def test_dense_row_missing_a_task_is_warned():
    cells = {("dense", 0.0, "a"): [0.8, 0.81], ("acdc", 0.9, "a"): [0.7, 0.71], ("acdc", 0.9, "b"): [0.5, 0.52]}
    lb = leaderboard(_runs(cells), "resnet50", "linear")
    assert math.isnan(lb.cell(("acdc", 0.9), "Δ vs dense")[0])
    assert lb.warnings == ("the dense row misses b: Δ vs dense is missing everywhere (run dense on every task, "
                           "or pass --allow-incomplete-mean)",)
    assert "**Warning:** the dense row misses b" in lb.to_markdown()
    assert "% warning: the dense row misses b" in lb.to_latex()
    no_dense = leaderboard(_runs({("acdc", 0.9, "a"): [0.7]}), "resnet50", "linear")
    assert no_dense.warnings == ("no dense row for resnet50/linear: Δ vs dense is missing everywhere",)


def test_both_sources_only_where_the_solver_has_both(tmp_path):
    cells = {("dense", 0.0, "a"): [0.8, 0.81], ("acdc", 0.9, "a"): [0.7, 0.72]}
    runs = pd.concat([_runs(cells, solver="sgd"), _runs(cells, solver="lbfgs"),
                      _runs(cells, source="paper", solver="sgd")], ignore_index=True)
    assert group_sources(runs, Group("resnet50", "linear", "sgd"), "both") == ["both"]
    assert group_sources(runs, Group("resnet50", "linear", "lbfgs"), "both") == ["ours"]
    names = {p.name for p in write_leaderboards(runs, tmp_path)}
    assert "leaderboard_resnet50_linear_sgd_ours_vs_paper.md" in names
    assert "leaderboard_resnet50_linear_lbfgs.md" in names
    assert not any(n.startswith("leaderboard_resnet50_linear_lbfgs_ours_vs_paper") for n in names)
