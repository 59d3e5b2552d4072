"""How well do the transferability estimators predict measured transfer? (`transferbench rank`)

For every (task, architecture family, mode) with measured runs, the checkpoints that have both an estimate record
(mode ``estimate``) and measured accuracies are ranked twice: by each estimator's score and by their measured
accuracy (the task's primary metric, averaged over seeds; the paper's per-seed results can stand in for ours).
Per estimator the table gives:

- ``kendall_tau`` and ``spearman_rho`` (scipy's ``kendalltau`` (tau-b) and ``spearmanr``) over the ``n``
  checkpoints, each with a percentile bootstrap interval over checkpoints (``BOOTSTRAP`` resamples, seeded: the
  same table every time);
- ``pick``: the checkpoint with the highest score, its measured accuracy, the best checkpoint's, and the
  ``regret`` (best minus picked, in accuracy points: 0 when the estimator picks the best).

For full fine-tuning the linear probe's own measured accuracy is ranked as one more predictor (``linear_probe``):
the paper finds that linear and full rankings of sparse checkpoints differ, so an estimator of the features can
only be as good as the probe is at predicting full fine-tuning. A checkpoint is (method, target sparsity, arch);
estimates and measurements are matched on it and on the data they saw (``limit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_bytes
from ..errors import TransferbenchError
from ..estimators import ESTIMATORS
from .render import fmt_sparsity, markdown_table
from .select import families, safe_name

BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
LINEAR_PROBE = "linear_probe"
CHECKPOINT = ["arch", "method", "target_sparsity", "limit"]
RANK_COLUMNS = ("task", "arch", "mode", "estimator", "n", "kendall_tau", "kendall_low", "kendall_high",
                "spearman_rho", "spearman_low", "spearman_high", "pick", "pick_accuracy", "best", "best_accuracy",
                "regret")


@dataclass(frozen=True)
class Ranking:
    """The correlation table (``RANK_COLUMNS``) and the paired scores and accuracies it was computed from."""

    table: pd.DataFrame
    pairs: pd.DataFrame  # one row per (task, arch, mode, checkpoint): accuracy and every predictor's score


def paired_scores(runs: pd.DataFrame, measured: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (task, arch family, mode, checkpoint) with the measured accuracy (``accuracy``: the mean
    primary metric over seeds) and each estimator's score (the mean over the checkpoint's estimate records).
    ``runs``: collected runs with the estimates; ``measured``: the runs that count as measured (default: the
    linear and full runs of ``runs``, e.g. the paper's rows instead)."""
    runs = runs.assign(arch=families(runs["arch"]))
    estimates = runs[runs["mode"] == "estimate"]
    if estimates.empty:
        raise TransferbenchError("no estimate records: run `transferbench estimate` (or the sweep "
                                 "paper_resnet50_estimates) first")
    measured = runs if measured is None else measured.assign(arch=families(measured["arch"]))
    measured = measured[measured["mode"].isin(("linear", "full"))]
    if measured.empty:
        raise TransferbenchError("no measured transfer runs (linear or full) to rank the estimates against; run "
                                 "them, or pass the paper's results with --reference")
    scores = estimates.groupby(["task", *CHECKPOINT], dropna=False)[list(ESTIMATORS)].mean().reset_index()
    accuracy = (measured.groupby(["task", "mode", *CHECKPOINT], dropna=False)["primary"]
                .agg(accuracy="mean", seeds="count").reset_index())
    pairs = accuracy.merge(scores, on=["task", *CHECKPOINT], how="inner")
    probe = accuracy[accuracy["mode"] == "linear"][["task", *CHECKPOINT, "accuracy"]]
    pairs = pairs.merge(probe.rename(columns={"accuracy": LINEAR_PROBE}), on=["task", *CHECKPOINT], how="left")
    pairs.loc[pairs["mode"] != "full", LINEAR_PROBE] = math.nan  # the probe predicting itself says nothing
    return pairs.sort_values(["task", "arch", "mode", "method", "target_sparsity"]).reset_index(drop=True)


def rank_estimators(runs: pd.DataFrame, measured: pd.DataFrame | None = None, *, bootstrap: int = BOOTSTRAP,
                    seed: int = BOOTSTRAP_SEED) -> Ranking:
    """The correlation table of every predictor per (task, arch family, mode) (module docstring)."""
    pairs = paired_scores(runs, measured)
    rows = []
    for (task, arch, mode), group in pairs.groupby(["task", "arch", "mode"], sort=True):
        for predictor in (*ESTIMATORS, LINEAR_PROBE):
            usable = group.dropna(subset=[predictor, "accuracy"])
            if len(usable) >= 2:
                rows.append({"task": task, "arch": arch, "mode": mode, "estimator": predictor,
                             **correlations(usable[predictor].to_numpy(), usable["accuracy"].to_numpy(),
                                            bootstrap, seed), **_pick(usable, predictor)})
    table = pd.DataFrame(rows, columns=list(RANK_COLUMNS))
    return Ranking(table, pairs)


def correlations(scores: np.ndarray, accuracy: np.ndarray, bootstrap: int = BOOTSTRAP,
                 seed: int = BOOTSTRAP_SEED) -> dict[str, float]:
    """Kendall's tau-b and Spearman's rho of ``scores`` against ``accuracy``, with percentile bootstrap intervals
    over the checkpoints (resamples where either side is constant have no correlation and are skipped)."""
    from scipy.stats import kendalltau, spearmanr

    tau, rho = _statistic(kendalltau, scores, accuracy), _statistic(spearmanr, scores, accuracy)
    rng = np.random.default_rng(seed)
    taus, rhos = [], []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(scores), len(scores))
        s, a = scores[idx], accuracy[idx]
        if np.ptp(s) > 0 and np.ptp(a) > 0:
            taus.append(_statistic(kendalltau, s, a))
            rhos.append(_statistic(spearmanr, s, a))
    tail = (1 - CONFIDENCE) / 2 * 100
    low_tau, high_tau = np.percentile(taus, [tail, 100 - tail]) if taus else (math.nan, math.nan)
    low_rho, high_rho = np.percentile(rhos, [tail, 100 - tail]) if rhos else (math.nan, math.nan)
    return {"n": len(scores), "kendall_tau": tau, "kendall_low": float(low_tau), "kendall_high": float(high_tau),
            "spearman_rho": rho, "spearman_low": float(low_rho), "spearman_high": float(high_rho)}


def _statistic(test, x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan  # a constant side ranks nothing (scipy warns and returns NaN)
    return float(test(x, y).statistic)


def _pick(group: pd.DataFrame, predictor: str) -> dict[str, object]:
    """The checkpoint the predictor ranks first (ties: the first in table order), the best measured one, and the
    regret in accuracy points."""
    picked = group.loc[group[predictor].idxmax()]
    best = group.loc[group["accuracy"].idxmax()]
    return {"pick": _name(picked), "pick_accuracy": float(picked["accuracy"]), "best": _name(best),
            "best_accuracy": float(best["accuracy"]),
            "regret": 100 * (float(best["accuracy"]) - float(picked["accuracy"]))}


def _name(row: pd.Series) -> str:
    return f"{row['method']}@{fmt_sparsity(float(row['target_sparsity']))}"


def write_ranking(ranking: Ranking, out: str | Path) -> list[Path]:
    """``rank.csv`` (every column), ``rank.md`` (one table per arch and mode), ``pairs.csv`` and a figure per
    (arch, mode) of score against accuracy, one panel per task and a row per predictor."""
    out = Path(out)
    written = [write_bytes(out / "rank.csv", ranking.table.to_csv(index=False).encode()),
               write_bytes(out / "pairs.csv", ranking.pairs.to_csv(index=False).encode()),
               write_bytes(out / "rank.md", rank_markdown(ranking.table).encode())]
    for (arch, mode), pairs in ranking.pairs.groupby(["arch", "mode"], sort=True):
        written.extend(score_figure(pairs, ranking.table, out / f"rank_{safe_name(arch)}_{mode}"))
    return written


def rank_markdown(table: pd.DataFrame) -> str:
    header = ["task", "estimator", "n", "Kendall tau [95% CI]", "Spearman rho [95% CI]", "pick", "best",
              "regret (points)"]
    parts = ["# Transferability estimators against measured transfer\n",
             "Rank correlation over the checkpoints of each task (bootstrap intervals over checkpoints); the pick "
             "is the checkpoint an estimator ranks first, the regret its accuracy's distance to the best one's.\n"]
    for (arch, mode), group in table.groupby(["arch", "mode"], sort=True):
        rows = [[r.task, r.estimator, r.n, _interval(r.kendall_tau, r.kendall_low, r.kendall_high),
                 _interval(r.spearman_rho, r.spearman_low, r.spearman_high), r.pick, r.best, f"{r.regret:.2f}"]
                for r in group.itertuples()]
        parts += [f"\n## {arch}, {mode}\n", markdown_table(header, rows, left=("task", "estimator", "pick", "best"))]
    return "\n".join(parts) + "\n"


def _interval(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "n/a (constant)"
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]" if not math.isnan(low) else f"{value:+.2f}"


def score_figure(pairs: pd.DataFrame, table: pd.DataFrame, stem: Path) -> list[Path]:
    """Each predictor's score (rows) against the measured accuracy, one panel per task (columns), tau in the
    panel's title."""
    from .figstyle import new_figure, paper_style, save

    tasks = sorted(pairs["task"].unique())
    predictors = [p for p in (*ESTIMATORS, LINEAR_PROBE) if pairs[p].notna().any()]
    arch, mode = pairs["arch"].iloc[0], pairs["mode"].iloc[0]
    with paper_style():
        fig = new_figure(width=2.2 * len(tasks) + 0.6, height=1.7 * len(predictors) + 0.4)
        axes = fig.subplots(len(predictors), len(tasks), squeeze=False)
        for i, predictor in enumerate(predictors):
            for j, task in enumerate(tasks):
                ax, data = axes[i][j], pairs[pairs["task"] == task]
                ax.scatter(data[predictor], 100 * data["accuracy"], s=14)
                row = table[(table["task"] == task) & (table["estimator"] == predictor) & (table["arch"] == arch)
                            & (table["mode"] == mode)]
                tau = f"tau {row['kendall_tau'].iloc[0]:+.2f}" if len(row) else "n < 2"
                ax.set_title(f"{task}: {tau}", fontsize=7)
                ax.set_xlabel(predictor, fontsize=7)
                if j == 0:
                    ax.set_ylabel(f"{mode} acc. (%)", fontsize=7)
        fig.suptitle(f"Estimator score vs measured accuracy ({arch}, {mode})", fontsize=8)
        return save(fig, stem)
