"""The compact LaTeX leaderboard: one paper column, every number checked against hand-made runs."""

from __future__ import annotations

import re

import pandas as pd

from transferbench.report.latex import abbreviate_task, compact_latex
from transferbench.report.leaderboard import leaderboard

TASKS = ("cifar10", "dtd", "sun397")


def _runs() -> pd.DataFrame:
    """dense and acdc 90% on three tasks, two seeds each; accuracies chosen so the expected cells are exact."""
    acc = {("dense", 0.0): {"cifar10": (0.97, 0.97), "dtd": (0.75, 0.77), "sun397": (0.64, 0.64)},
           ("acdc", 0.9): {"cifar10": (0.96, 0.96), "dtd": (0.78, 0.78), "sun397": (0.62, 0.60)}}
    rows = []
    for (method, sparsity), tasks in acc.items():
        for task, seeds in tasks.items():
            for seed, value in enumerate(seeds):
                rows.append({"run_key": f"{method}{task}{seed}", "task": task, "method": method, "arch": "resnet50",
                             "mode": "full", "seed": seed, "target_sparsity": sparsity, "primary": value,
                             "top1": value, "mean_per_class_acc": value, "primary_metric": "top1", "solver": None,
                             "source": "ours", "created_at": pd.Timestamp("2026-01-01", tz="UTC")})
    return pd.DataFrame(rows)


def test_compact_table_cells_and_layout():
    tex = compact_latex(leaderboard(_runs(), "resnet50", "full"), labels={"acdc": "AC/DC (ours)"})
    body = tex[tex.index(r"\begin{tabular}"):]
    assert r"\resizebox{\columnwidth}{!}{%" in tex and body.rstrip().endswith(r"\end{tabular}}")
    assert r"\begin{tabular}{llrrrrr}" in body  # method, sparsity, 3 tasks, mean, Δ
    assert r"Method & Sp. & C10 & DTD & SUN & Mean & $\Delta$ \\" in body
    # dense: 97.0, 76.0, 64.0 → mean 79.0; per-task stds 0, 1.414, 0 → ± sqrt(2)/3 = 0.47 → 0.5
    assert (r"Dense & 0\% & \textbf{97.0} & 76.0 & \textbf{64.0} & \textbf{79.0}{\tiny$\pm$0.5} & \textbf{$+$0.0} \\"
            in body)
    # acdc: 96.0, 78.0, 61.0 → mean 78.33 → 78.3, std of sun397 1.414 → ± 0.5; Δ = 78.33 − 79.0 = −0.67 → −0.7
    assert r"AC/DC (ours) & 90\% & 96.0 & \textbf{78.0} & 61.0 & 78.3{\tiny$\pm$0.5} & $-$0.7 \\" in body
    assert "±" not in body and "(n=" not in body  # no seed counts, no unescaped unicode in the table
    assert "C10 = cifar10" in tex.splitlines()[0]  # the abbreviations are spelled out above the table
    assert len(re.findall(r"\\\\", body)) == 3  # header and two rows


def test_task_abbreviations():
    assert [abbreviate_task(t) for t in ("caltech101", "flowers", "my_long_task")] == ["C101", "Flw", "my_lo"]
