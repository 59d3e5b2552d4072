"""Our results against the paper's, cell by cell: (arch family, mode, solver, task, method, sparsity).

Per cell: our mean, std and seed count, the paper's, the difference (ours − paper, in percentage points) and a
verdict on whether the difference is outside seed noise, at ``alpha`` (default 0.05, two-sided). The test depends
on the seeds each side has (column ``test``):

* both sides ≥ 2 seeds: Welch's two-sample t-test (unequal variances),

      se = sqrt(s_o²/n_o + s_p²/n_p),  t = (m_o − m_p) / se,
      df = se⁴ / ((s_o²/n_o)² / (n_o − 1) + (s_p²/n_p)² / (n_p − 1)),  p = 2·(1 − F_t(|t|; df));

* one side a single seed x, the other n ≥ 2 seeds (mean m, std s): a prediction-interval test, whether x could be
  one more seed of the other side: se = s·sqrt(1 + 1/n), t = (x − m) / se, df = n − 1 (x lies outside the
  (1 − alpha) prediction interval m ± t_{1−alpha/2, n−1}·se exactly when p < alpha);
* both sides a single seed: ``n/a``. No spread is known for the cell, and borrowing one would be a guess: the
  paper's only single-seed file is full MobileNetV1, and its other files give seed spreads of ResNet50 alone.

``outside`` when p < alpha, ``within`` otherwise. With zero spread any non-zero difference is ``outside``. It tests
seed noise only: a systematic difference (another data split, checkpoint or preprocessing) is by design reported as
``outside``. Cells are tested one by one, uncorrected: with m tested cells about alpha·m are flagged by chance,
which ``summary`` states. A seed of ours repeated under the same protocol is an error naming both runs unless
``latest`` (the newest counts; ``select.check_duplicate_seeds``).

Only runs that followed the paper's protocol exactly are compared with it (``select.exclude_deviating``: a
shortened, bf16, FFCV or ``--limit`` run is not the paper's experiment); ``include_deviating`` keeps them, and
every cell holding one is marked ``†`` and lists the deviations in its ``protocol`` column.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_bytes
from ..errors import TransferbenchError
from .palette import method_sort_key
from .render import fmt_sparsity, markdown_table
from .select import (
    OURS,
    PAPER,
    check_duplicate_seeds,
    deviating,
    deviations_of,
    exclude_deviating,
    filter_source,
    limited,
    metric_column,
    per_seed_runs,
)

log = logging.getLogger("transferbench")

KEYS = ["arch", "mode", "solver", "task", "method", "sparsity"]
OUTSIDE, WITHIN, NA = "outside", "within", "n/a"
WELCH, PREDICTION = "welch", "prediction"
ALPHA = 0.05


DEVIATION_MARK = "†"


def _cells(runs: pd.DataFrame, col: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean, std and n per cell in %, the runs that count: one per seed of a cell)."""
    df = per_seed_runs(runs[runs[col].notna()])
    return df.groupby(KEYS)[col].agg(mean="mean", std="std", n="count") * [100.0, 100.0, 1.0], df


def _cell_protocols(df: pd.DataFrame) -> pd.Series:
    """Per cell of the runs ``df``: ``paper``, or the deviations of the runs it holds (joined by "; ")."""
    off = deviating(df)
    texts = {key: "; ".join(deviations_of(group)) if off[group.index].any() else "paper"
             for key, group in df.groupby(KEYS)}
    index = pd.MultiIndex.from_tuples(list(texts), names=KEYS) if texts else None
    return pd.Series(list(texts.values()), index=index, name="protocol", dtype=object)


def welch(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int) -> tuple[float, float, float, float]:
    """(se, t, df, p) of Welch's t-test for the difference m1 − m2; NaN when a side has fewer than 2 samples."""
    from scipy.stats import t as student_t

    if n1 < 2 or n2 < 2:
        return (math.nan,) * 4
    v1, v2 = s1 * s1 / n1, s2 * s2 / n2
    se = math.sqrt(v1 + v2)
    diff = m1 - m2
    if se == 0.0:
        return 0.0, (math.inf if diff else 0.0), math.nan, (0.0 if diff else 1.0)
    df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    t = diff / se
    return se, t, df, float(2.0 * student_t.sf(abs(t), df))


def prediction_test(x: float, m: float, s: float, n: int) -> tuple[float, float, float, float]:
    """(se, t, df, p) for whether the single value x could be one more draw of n ≥ 2 values with mean m and std
    s (t distribution with n − 1 degrees of freedom); NaN when n < 2."""
    from scipy.stats import t as student_t

    if n < 2 or math.isnan(s):
        return (math.nan,) * 4
    se = s * math.sqrt(1.0 + 1.0 / n)
    diff = x - m
    if se == 0.0:
        return 0.0, (math.inf if diff else 0.0), float(n - 1), (0.0 if diff else 1.0)
    t = diff / se
    return se, t, float(n - 1), float(2.0 * student_t.sf(abs(t), n - 1))


def noise_test(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int) -> tuple[str, float, float, float, float]:
    """(test, se, t, df, p) for m1 − m2: Welch with ≥ 2 seeds on both sides, the prediction-interval test with
    one seed on one side, ``n/a`` (NaNs) otherwise. t has the sign of m1 − m2."""
    if n1 >= 2 and n2 >= 2:
        return (WELCH, *welch(m1, s1, n1, m2, s2, n2))
    if n1 == 1 and n2 >= 2:
        return (PREDICTION, *prediction_test(m1, m2, s2, n2))
    if n2 == 1 and n1 >= 2:
        se, t, df, p = prediction_test(m2, m1, s1, n1)
        return PREDICTION, se, -t, df, p
    return (NA, *(math.nan,) * 4)


def compare(
    runs: pd.DataFrame, reference: pd.DataFrame | None = None, *, metric: str = "primary", alpha: float = ALPHA,
    include_deviating: bool = False, latest: bool = False,
) -> pd.DataFrame:
    """One row per cell our runs have: ours and the paper's mean/std/n (in %), ``diff`` (pp), the ``test`` used
    (welch, prediction or n/a), its ``se``, ``t``, ``df``, ``p``, ``verdict`` (outside/within/n/a) and ``protocol``
    (``paper`` or the deviations of the cell's runs). ``reference`` defaults to the paper's rows of ``runs``;
    ``include_deviating`` and ``latest`` as in the module docstring."""
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise TransferbenchError(f"--alpha {alpha}: the test level must lie strictly between 0 and 1, e.g. 0.05")
    col = metric_column(metric)
    ours = filter_source(runs, OURS)
    paper = filter_source(runs if reference is None else reference, PAPER)
    ours = check_duplicate_seeds(ours, latest)
    kept = exclude_deviating(ours, include_deviating)
    if kept.empty and limited(ours).all() and not ours.empty:
        raise TransferbenchError("only --limit runs under --results: they use a subset of each split and are not "
                                 "compared with the paper; run without --limit first (or pass --include-deviating)")
    if kept.empty and not ours.empty:
        raise TransferbenchError(
            f"all {len(ours)} run(s) of ours deviate from the paper's protocol ({'; '.join(deviations_of(ours)[:4])})"
            " and are not compared with it; run with the protocol's settings, or pass --include-deviating to "
            "compare them anyway, marked")
    ours = kept
    if ours.empty:
        raise TransferbenchError("no completed runs of ours to compare (--results); run experiments first")
    if paper.empty:
        raise TransferbenchError(
            "no paper results to compare with; pass --reference with the paper's raw_results/*.txt files"
        )
    (o, counted), (p, _) = _cells(ours, col), _cells(paper, col)
    table = o.add_prefix("ours_").join(p.add_prefix("paper_"), how="left").join(_cell_protocols(counted))
    table = table.reset_index()
    table["paper_n"] = table["paper_n"].fillna(0)
    table["diff"] = table["ours_mean"] - table["paper_mean"]
    stats = [
        noise_test(r.ours_mean, r.ours_std, int(r.ours_n), r.paper_mean, r.paper_std, int(r.paper_n))
        for r in table.itertuples()
    ]
    table["test"] = [s[0] for s in stats] if stats else pd.Series(dtype=object)
    table[["se", "t", "df", "p"]] = (
        pd.DataFrame([s[1:] for s in stats], index=table.index, dtype=float) if stats else np.nan
    )
    table["verdict"] = np.where(table["p"].isna(), NA, np.where(table["p"] < alpha, OUTSIDE, WITHIN))
    table[["ours_n", "paper_n"]] = table[["ours_n", "paper_n"]].astype(int)
    order = sorted(
        table.index,
        key=lambda i: (
            table.at[i, "arch"],
            table.at[i, "mode"],
            table.at[i, "task"],
            method_sort_key(table.at[i, "method"]),
            table.at[i, "sparsity"],
        ),
    )
    table = table.loc[order].reset_index(drop=True)
    table.attrs.update(alpha=alpha, metric=metric)
    if "epoch" in runs.attrs:
        table.attrs["epoch"] = runs.attrs["epoch"]
    return table


def summary(table: pd.DataFrame) -> str:
    counts = table["verdict"].value_counts()
    tested = int(counts.get(OUTSIDE, 0) + counts.get(WITHIN, 0))
    alpha = table.attrs.get("alpha", ALPHA)
    no_paper = int((table["paper_n"] == 0).sum())
    return (
        f"{len(table)} cell(s): {counts.get(OUTSIDE, 0)} outside seed noise, {counts.get(WITHIN, 0)} within, "
        f"{counts.get(NA, 0)} n/a (one seed on each side or no paper result; {no_paper} without a paper result). "
        f"Welch t-test per cell, or a prediction-interval test where one side has a single seed, at "
        f"alpha={alpha:g}: about {alpha * tested:.1f} of {tested} would be flagged by chance alone"
    )


def _fmt(x: float, spec: str = ".2f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def display_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as text, for printing and Markdown."""
    return pd.DataFrame(
        {
            "arch": table["arch"],
            "mode": table["mode"],
            "solver": table["solver"],
            "task": table["task"],
            "method": table["method"],
            "sparsity": [fmt_sparsity(s) for s in table["sparsity"]],
            "ours": [
                (f"{_fmt(m)} ± {_fmt(s)} (n={n})" if n > 1 else f"{_fmt(m)} (n={n})") + _mark(protocol)
                for m, s, n, protocol in zip(table["ours_mean"], table["ours_std"], table["ours_n"],
                                             _protocols(table), strict=True)
            ],
            "paper": [
                ("—" if n == 0 else f"{_fmt(m)} ± {_fmt(s)} (n={n})" if n > 1 else f"{_fmt(m)} (n={n})")
                for m, s, n in zip(table["paper_mean"], table["paper_std"], table["paper_n"], strict=True)
            ],
            "diff (pp)": [_fmt(d, "+.2f") for d in table["diff"]],
            "p": [_fmt(p, ".3g") for p in table["p"]],
            "test": table["test"],
            "verdict": table["verdict"],
        }
    )


def _protocols(table: pd.DataFrame) -> pd.Series:
    return table["protocol"] if "protocol" in table.columns else pd.Series("paper", index=table.index)


def _mark(protocol: str) -> str:
    return "" if protocol == "paper" else f" {DEVIATION_MARK}"


def deviation_note(table: pd.DataFrame) -> str:
    """The footnote for cells marked †, or "" when every cell followed the paper's protocol."""
    off = sorted({d for text in _protocols(table) if text != "paper" for d in str(text).split("; ")})
    if not off:
        return ""
    return (f"{DEVIATION_MARK} the cell holds runs that deviate from the paper's protocol ({'; '.join(off)}), "
            "included by --include-deviating: not the paper's experiment.")


def to_markdown(table: pd.DataFrame) -> str:
    shown = display_frame(table)
    lines = [markdown_table(list(shown.columns), shown.itertuples(index=False),
                            left=("arch", "mode", "solver", "task", "method", "test", "verdict"))]
    note = (
        f"Ours vs the paper, {table.attrs.get('metric', 'primary')} in %: mean ± std over seeds (n seeds). "
        "diff = ours − paper in percentage points; verdict at alpha="
        f"{table.attrs.get('alpha', ALPHA):g} by Welch's t-test (both sides ≥ 2 seeds) or a prediction-interval "
        "test with the other side's spread (one side a single seed): outside / within seed noise; n/a: a single "
        "seed on both sides or no paper result."
        + (f" Accuracies of each run's {table.attrs['epoch']} epoch." if table.attrs.get("epoch") else "")
    )
    footnote = deviation_note(table)
    return "\n".join(lines) + f"\n\n_{note}_\n\n" + (f"{footnote}\n\n" if footnote else "") + f"{summary(table)}.\n"


def write_compare(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """``compare.csv`` (every number) and ``compare.md``."""
    out = Path(out_dir)
    return [
        write_bytes(out / "compare.csv", table.to_csv(index=False).encode()),
        write_bytes(out / "compare.md", to_markdown(table).encode()),
    ]
