"""Sparse vs dense predictions (``transferbench report beyond``): each sparse run's saved test predictions against
its dense partner's, for what pruning changes in a transferred model's predictions, not only how many are right.

Every sparse run is paired with the dense run of the same (architecture family, mode, solver, task, seed), whose
``predictions.npz`` must hold the same test labels in the same order. For each pair
``prediction_metrics.pair_metrics`` gives churn, flips, ECE, entropy and per-class drops; per (arch, mode, solver,
task, method, sparsity) cell these are averaged over seeds, the classes hurt most are listed, and the
pruning-identified exemplars are found over the paired seeds (at least 2). A sparse run without predictions,
without a dense partner, or whose test list differs from its partner's is counted and listed in ``missing``, never
skipped silently; a cell whose seeds were tested on different test lists (labels, their order or the class count
differ between seeds) cannot be averaged per class or per sample, and is listed in ``skipped`` with the reason.

Classes are named as the run saved them with its predictions (``classes`` in predictions.npz: the folder or
dataset class names), else by the task card's optional ``class_names`` list, else by index.
The classes "hurt most" are those with the lowest mean drop over seeds, among those that dropped (Δ < 0).
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import shipped
from ..atomic import write_bytes
from ..errors import TransferbenchError
from ..store import PREDICTIONS_FILE
from ..tasks import is_multilabel
from . import prediction_metrics as bm
from .figstyle import PAGE_WIDTH_IN, FigureNotApplicable, SavedFigure, new_figure, paper_style, save
from .palette import DENSE, display_name, method_colors, method_sort_key, method_style, order_methods
from .render import fmt_sparsity, markdown_table
from .select import OURS, Group, filter_source, per_seed_runs, safe_name

log = logging.getLogger("transferbench")

GROUP_KEYS = ["arch", "mode", "solver", "task", "seed"]
CELL_KEYS = ["arch", "mode", "solver", "task", "method", "sparsity"]
METRICS = [
    "top1_dense",
    "top1_sparse",
    "churn",
    "nfr",
    "pfr",
    "ece_dense",
    "ece_sparse",
    "entropy_dense",
    "entropy_sparse",
    "entropy_shift",
    "worst_class_drop",
    "bottom10_class_drop",
    "std_class_drop",
]
PAIR_COLUMNS = [*CELL_KEYS[:4], "seed", *CELL_KEYS[4:], "run_key", "dense_run_key", "n_test", "num_classes", *METRICS,
                "classes_used"]
MISSING_COLUMNS = [*CELL_KEYS[:4], "seed", *CELL_KEYS[4:], "run_key", "reason"]
CELL_COLUMNS = [*CELL_KEYS, "seeds", "top1_dense", "top1_sparse", "delta_top1", "churn", "nfr", "pfr", "ece_dense",
                "ece_sparse", "delta_ece", "entropy_dense", "entropy_sparse", "entropy_shift", "worst_class_drop",
                "bottom10_class_drop", "std_class_drop", "pie_count", "pie_fraction", "most_hurt"]
CLASS_COLUMNS = [*CELL_KEYS, "class", "class_name", "n", "dense_acc", "mean_drop", "used"]
EXEMPLAR_COLUMNS = [*CELL_KEYS, "index", "label", "class_name", "dense_modal", "sparse_modal", "sparse_seeds_away",
                    "dense_modal_correct"]
SKIPPED_COLUMNS = [*CELL_KEYS, "seeds", "reason"]
HURT_SHOWN = 3
EXEMPLARS_SHOWN = 20
FIGURE_PANELS = (  # y-labels on two lines: one line as tall as a panel would run into the title
    ("churn", "Churn vs dense\n(%)", 100.0),
    ("delta_ece", "ECE − dense ECE\n(pp)", 100.0),
    ("entropy_shift", "Entropy shift\n(pp of log C)", 100.0),
    ("pie_fraction", "PIEs\n(% of test set)", 100.0),
)


@dataclass(frozen=True)
class Beyond:
    pairs: pd.DataFrame  # one row per (sparse run, dense partner): prediction_metrics.pair_metrics
    cells: pd.DataFrame  # per cell: means over seeds, PIEs, the classes hurt most
    classes: pd.DataFrame  # per cell and class: n, dense accuracy, mean drop over seeds
    exemplars: pd.DataFrame  # per cell: the most susceptible test samples
    missing: pd.DataFrame  # sparse runs that could not be paired, and why
    min_count: int = bm.MIN_COUNT
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SKIPPED_COLUMNS))

    def summary(self) -> str:
        text = f"{len(self.pairs)} sparse/dense pair(s) in {len(self.cells)} cell(s)"
        if len(self.skipped):
            text += f"; {len(self.skipped)} cell(s) skipped (test lists differ across seeds)"
        if len(self.missing):
            reasons = self.missing["reason"].str.split(":").str[0].value_counts()
            text += (
                f"; {len(self.missing)} sparse run(s) not paired ("
                + "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
                + ")"
            )
        return text


def _predictions(path: Path, names: dict[int, tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray] | str:
    """(logits, labels) or the reason they cannot be used; the class names saved with them go to ``names`` (by
    class count: runs of one task and class count name their classes alike)."""
    try:
        with np.load(path) as npz:
            logits, labels = npz["logits"], npz["labels"]
            if "classes" in npz.files and len(npz["classes"]) == logits.shape[1]:
                names.setdefault(logits.shape[1], tuple(str(n) for n in npz["classes"]))
    except FileNotFoundError:
        return f"no predictions: {path} does not exist"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return f"unreadable predictions: {path}: {exc}"
    if logits.ndim != 2 or labels.ndim != 1 or len(labels) != len(logits) or len(labels) == 0:
        return f"unreadable predictions: {path}: logits {logits.shape} and labels {labels.shape} do not match"
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        return f"unreadable predictions: {path}: labels outside 0..{logits.shape[1] - 1}"
    return logits, labels.astype(np.int64)


def _prepare(runs: pd.DataFrame) -> pd.DataFrame:
    """Our per-seed runs of single-label tasks (a multi-label study's runs are analysed by ``report.bias``)."""
    runs = per_seed_runs(filter_source(runs, OURS) if "source" in runs.columns else runs)
    return runs[~runs["task"].map(is_multilabel)] if len(runs) else runs


def beyond(runs: pd.DataFrame, min_count: int = bm.MIN_COUNT) -> Beyond:
    """The beyond-accuracy analysis of our runs (``runs`` from :func:`collect`; predictions are read beside each
    record's ``path``)."""
    predictions = _Predictions()
    pairs, missing, preds = _pair_runs(_prepare(runs), predictions, min_count)
    pairs_df = pd.DataFrame(pairs, columns=PAIR_COLUMNS)
    missing_df = pd.DataFrame(missing, columns=MISSING_COLUMNS)
    cells, classes, exemplars, skipped = _cells(pairs_df, preds, min_count, predictions.saved_names)
    result = Beyond(pairs_df, cells, classes, exemplars, missing_df, min_count, skipped)
    (log.warning if len(missing_df) else log.info)("beyond accuracy: %s", result.summary())
    return result


class _Predictions:
    """Each run's (logits, labels), or the reason they cannot be used, read once; the class names saved with them
    by task and class count (``saved_names``)."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[np.ndarray, np.ndarray] | str] = {}
        self.saved_names: dict[str, dict[int, tuple[str, ...]]] = {}

    def of(self, row) -> tuple[np.ndarray, np.ndarray] | str:
        if row.run_key not in self._read:
            self._read[row.run_key] = _predictions(Path(row.path).parent / PREDICTIONS_FILE,
                                                   self.saved_names.setdefault(row.task, {}))
        return self._read[row.run_key]


def _pair_runs(df: pd.DataFrame, predictions: _Predictions, min_count: int) -> tuple[list[dict], list[dict], dict]:
    """Every sparse run with the dense run of its (arch, mode, solver, task, seed): (the metrics of each pair, each
    sparse run that could not be paired with the reason, the predicted labels of each pair — sparse, dense and the
    true labels — by (arch, mode, solver, task, seed, method, sparsity))."""
    pairs, missing, preds = [], [], {}
    for key, group in df.groupby(GROUP_KEYS, sort=True):
        dense = next(group[group["method"] == DENSE].itertuples(), None)
        partner = predictions.of(dense) if dense is not None else None
        for row in group[group["method"] != DENSE].itertuples():
            ident = dict(zip(GROUP_KEYS, key, strict=True)) | {"method": row.method, "sparsity": row.sparsity}
            own = predictions.of(row)
            reason = _unpaired_reason(own, partner, key, dense)
            if reason is not None:
                missing.append({**ident, "run_key": row.run_key, "reason": reason})
                continue
            logits, labels = own
            pairs.append({**ident, "run_key": row.run_key, "dense_run_key": dense.run_key, "n_test": len(labels),
                          "num_classes": logits.shape[1], **bm.pair_metrics(partner[0], logits, labels, min_count)})
            preds[(*ident.values(),)] = (logits.argmax(1), partner[0].argmax(1), labels)
    return pairs, missing, preds


def _unpaired_reason(own, partner, key: tuple, dense) -> str | None:
    """Why a sparse run's predictions (``own``) cannot be compared with its dense partner's, or None."""
    if partner is None:
        return f"no dense partner: no dense run for {'/'.join(map(str, key))}"
    if isinstance(own, str):
        return own
    if isinstance(partner, str):
        return f"dense partner unusable: {partner}"
    if own[0].shape[1] != partner[0].shape[1] or not np.array_equal(own[1], partner[1]):
        return f"test list differs: labels or classes differ from the dense run's ({dense.run_key})"
    return None


@cache
def class_names(task: str) -> tuple[str, ...] | None:
    """The task card's ``class_names`` (one per label index), or None when the card has none."""
    try:
        card = shipped.load_shipped("task", task)[0]
    except TransferbenchError:
        return None
    names = card.get("class_names") if isinstance(card, dict) else None
    return tuple(str(n) for n in names) if isinstance(names, list) and names else None


def _class_label(names: tuple[str, ...] | None, k: int) -> str:
    return names[k] if names is not None and k < len(names) else str(k)


def _test_lists_differ(labels: tuple[np.ndarray, ...], num_classes: pd.Series) -> str | None:
    """Why the seeds of a cell cannot be compared sample by sample, or None."""
    if num_classes.nunique() > 1:
        return f"test lists differ across seeds: {', '.join(map(str, sorted(num_classes.unique())))} classes"
    first = labels[0]
    for other in labels[1:]:
        if len(other) != len(first):
            return f"test lists differ across seeds: {len(first)} and {len(other)} test samples"
        if not np.array_equal(other, first):
            return "test lists differ across seeds: the labels (or their order) differ"
    return None


def _cells(pairs: pd.DataFrame, preds: dict, min_count: int, saved_names: dict):
    """(cells, classes, exemplars, skipped) frames: per (arch, mode, solver, task, method, sparsity), over the
    cell's paired seeds; a cell whose seeds saw different test lists is skipped, with the reason."""
    cells, classes, exemplars, skipped = [], [], [], []
    for cell, group in pairs.groupby(CELL_KEYS, sort=False):
        ident = dict(zip(CELL_KEYS, cell, strict=True))
        seeds = sorted(group["seed"])
        sparse_p, dense_p, labels = zip(*(preds[(*cell[:4], s, *cell[4:])] for s in seeds), strict=True)
        reason = _test_lists_differ(labels, group["num_classes"])
        if reason is not None:
            skipped.append({**ident, "seeds": len(seeds), "reason": reason})
            log.warning("beyond accuracy: %s skipped: %s", "/".join(map(str, cell)), reason)
            continue
        c = int(group["num_classes"].iloc[0])
        names = saved_names.get(ident["task"], {}).get(c) or class_names(ident["task"])
        class_rows, most_hurt = _per_class(ident, sparse_p, dense_p, labels[0], c, names, min_count)
        classes += class_rows
        row = {**ident, "seeds": len(seeds), **group[METRICS].mean().to_dict(), "most_hurt": most_hurt}
        row["delta_top1"] = row["top1_sparse"] - row["top1_dense"]
        row["delta_ece"] = row["ece_sparse"] - row["ece_dense"]
        row["pie_count"], row["pie_fraction"] = None, math.nan
        if len(seeds) >= 2:
            row["pie_count"], row["pie_fraction"], cell_exemplars = _exemplars(ident, sparse_p, dense_p, labels[0],
                                                                               c, names)
            exemplars += cell_exemplars
        cells.append(row)
    return (
        _sorted_cells(pd.DataFrame(cells, columns=CELL_COLUMNS)),
        pd.DataFrame(classes, columns=CLASS_COLUMNS),
        pd.DataFrame(exemplars, columns=EXEMPLAR_COLUMNS),
        pd.DataFrame(skipped, columns=SKIPPED_COLUMNS),
    )


def _per_class(ident: dict, sparse_p: tuple[np.ndarray, ...], dense_p: tuple[np.ndarray, ...], labels: np.ndarray,
               c: int, names: tuple[str, ...] | None, min_count: int) -> tuple[list[dict], str]:
    """One row per class of a cell (n, dense accuracy and drop, both averaged over seeds, whether the class is
    counted) and the text of the classes hurt most, e.g. ``cat (-25.0), dog (-3.3)``."""
    drops = np.stack([bm.per_class_drop(s, d, labels, c)[0] for s, d in zip(sparse_p, dense_p, strict=True)])
    n = np.bincount(labels, minlength=c)
    mean_drop = drops.mean(axis=0)
    dense_acc = np.mean([bm.per_class_accuracy(d, labels, c)[0] for d in dense_p], axis=0)
    used = n >= min_count if (n >= min_count).any() else n > 0
    # only classes that lost accuracy are "hurt"; a cell where none did lists none
    hurt_rank = np.where(used & (mean_drop < 0), mean_drop, np.inf)
    hurt = [int(k) for k in np.argsort(hurt_rank, kind="stable")[:HURT_SHOWN] if np.isfinite(hurt_rank[k])]
    rows = [
        {**ident, "class": k, "class_name": _class_label(names, k), "n": int(n[k]), "dense_acc": dense_acc[k],
         "mean_drop": mean_drop[k], "used": bool(used[k])}
        for k in range(c)
    ]
    return rows, ", ".join(f"{_class_label(names, k)} ({mean_drop[k] * 100:+.1f})" for k in hurt)


def _exemplars(ident: dict, sparse_p: tuple[np.ndarray, ...], dense_p: tuple[np.ndarray, ...], labels: np.ndarray,
               c: int, names: tuple[str, ...] | None) -> tuple[int, float, list[dict]]:
    """The pruning-identified exemplars of a cell with at least 2 seeds: (how many, their share of the test set,
    rows for the most susceptible ones, at most ``EXEMPLARS_SHOWN``)."""
    sparse, dense = np.stack(sparse_p), np.stack(dense_p)
    pie = bm.pruning_identified_exemplars(sparse, dense, c)
    dense_modal = bm.modal_prediction(dense, c)
    sparse_modal = bm.modal_prediction(sparse, c)
    # how many sparse seeds move away from the dense population's answer
    away = (sparse != dense_modal).mean(axis=0)
    rows = []
    for i in np.lexsort((np.arange(len(pie)), -away, ~pie))[:EXEMPLARS_SHOWN]:
        if not pie[i]:
            break
        label = int(labels[i])
        rows.append({**ident, "index": int(i), "label": label, "class_name": _class_label(names, label),
                     "dense_modal": int(dense_modal[i]), "sparse_modal": int(sparse_modal[i]),
                     "sparse_seeds_away": float(away[i]), "dense_modal_correct": bool(dense_modal[i] == labels[i])})
    return int(pie.sum()), float(pie.mean()), rows


def _sorted_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells in the report's order: (arch, mode, solver, task), then the method order, then sparsity."""
    cells["pie_count"] = cells["pie_count"].astype("Int64")
    order = sorted(
        cells.index,
        key=lambda i: (*cells.loc[i, CELL_KEYS[:4]], method_sort_key(cells.at[i, "method"]), cells.at[i, "sparsity"]),
    )
    return cells.loc[order].reset_index(drop=True)


WORST_SEED_CLASS = "worst class per seed"


def to_markdown(result: Beyond) -> str:
    """The per-cell table in %, with the definitions."""

    def pct(x: float, sign: bool = False) -> str:
        return "—" if pd.isna(x) else (f"{x * 100:+.2f}" if sign else f"{x * 100:.2f}")

    head = ["arch", "mode", "task", "method", "sparsity", "seeds", "Δtop1", "churn", "NFR", "PFR", "ECE d→s",
            "Δentropy", WORST_SEED_CLASS, "PIEs", "classes hurt most (Δ pp)"]
    rows = []
    for r in result.cells.itertuples():
        pies = "—" if pd.isna(r.pie_count) else f"{int(r.pie_count)} ({r.pie_fraction * 100:.1f}%)"
        mode = r.mode if r.solver == "sgd" else f"{r.mode} ({r.solver})"
        rows.append([r.arch, mode, r.task, r.method, fmt_sparsity(r.sparsity), r.seeds, pct(r.delta_top1, True),
                     pct(r.churn), pct(r.nfr), pct(r.pfr), f"{pct(r.ece_dense)} → {pct(r.ece_sparse)}",
                     pct(r.entropy_shift, True), pct(r.worst_class_drop, True), pies, r.most_hurt or "—"])
    table = markdown_table(head, rows, left=("arch", "mode", "task", "method", "classes hurt most (Δ pp)"))
    note = (
        f"Sparse vs the dense run of the same task, mode and seed; means over seeds, in %. churn = predictions "
        "that differ from dense; NFR/PFR = right→wrong / wrong→right flips (Δtop1 = PFR − NFR); ECE: top-label, "
        f"{bm.ECE_BINS} equal-width bins; Δentropy: mean entropy / log C, sparse − dense; {WORST_SEED_CLASS}: in "
        f"each seed the lowest per-class accuracy drop over classes with ≥ {result.min_count} test samples, "
        "averaged over seeds (it can be lower than the first of the classes hurt most, whose drops are averaged "
        "over seeds first); classes hurt most: the lowest mean drops over seeds among classes that dropped (Δ < 0), "
        "named by the task card's class_names where it has them; PIEs: samples whose modal sparse prediction over "
        "seeds differs from the modal dense prediction (needs ≥ 2 seeds)."
    )
    text = table + f"\n\n_{note}_\n\n{result.summary()}.\n"
    if len(result.missing):
        text += "\n## Not paired\n\n" + markdown_table(
            ["run", "reason"], ([r.run_key, r.reason] for r in result.missing.itertuples()), left=("run", "reason")
        ) + "\n"
    if len(result.skipped):
        text += "\n## Skipped cells\n\n" + markdown_table(
            ["arch", "mode", "task", "method", "sparsity", "seeds", "reason"],
            ([r.arch, r.mode, r.task, r.method, fmt_sparsity(r.sparsity), r.seeds, r.reason]
             for r in result.skipped.itertuples()),
            left=("arch", "mode", "task", "method", "reason"),
        ) + "\n"
    return text


_DASHES = {"-": "", "-.": (4, 1.5, 1, 1.5), "--": (4, 2), ":": (1, 1.5)}  # line styles as seaborn's dash specs


def beyond_figure(cells: pd.DataFrame, arch: str, mode: str, solver: str | None = None) -> Figure:
    """Four panels against target sparsity, one line per method (mean over the tasks): churn, ΔECE, entropy
    shift and the PIE fraction."""
    import seaborn as sns

    df = cells[(cells["arch"] == arch) & (cells["mode"] == mode)]
    if solver is not None:
        df = df[df["solver"] == solver]
    if df.empty:
        raise FigureNotApplicable(f"{arch}/{mode}: no sparse/dense pairs")
    methods = order_methods(df["method"])
    df = df.assign(x=df["sparsity"] * 100)
    with paper_style():
        fig = new_figure(PAGE_WIDTH_IN, 2.0 + 0.15 * math.ceil(len(methods) / 6))
        axes = fig.subplots(1, len(FIGURE_PANELS))
        for ax, (col, label, scale) in zip(axes, FIGURE_PANELS, strict=True):
            data = df.assign(y=df[col] * scale).dropna(subset=["y"])
            if not data.empty:
                sns.lineplot(
                    data=data,
                    x="x",
                    y="y",
                    hue="method",
                    hue_order=methods,
                    palette=method_colors(methods),
                    style="method",
                    style_order=methods,
                    markers={m: method_style(m).marker for m in methods},
                    dashes={m: _DASHES[method_style(m).linestyle] for m in methods},  # as in every other figure
                    errorbar=None,
                    ax=ax,
                    legend=ax is axes[0],
                )
            ax.set_xlabel("Target sparsity (%)")
            ax.set_ylabel(label)
        handles, labels = axes[0].get_legend_handles_labels()
        labels = [display_name(m) for m in labels]
        if axes[0].get_legend() is not None:
            axes[0].get_legend().remove()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(6, len(methods)), frameon=False)
        tasks = df["task"].nunique()
        fig.suptitle(
            f"{arch} · {mode}{f' ({solver})' if solver else ''}: sparse vs dense, mean over {tasks} "
            f"task{'s' if tasks != 1 else ''}"
        )
    return fig


def write_beyond(result: Beyond, out_dir: str | Path) -> list[Path]:
    """``beyond.csv``/``beyond.md`` (per cell), ``beyond_pairs.csv``, ``beyond_classes.csv``,
    ``beyond_exemplars.csv``, ``beyond_missing.csv``, ``beyond_skipped.csv`` and one figure per
    (arch, mode[, solver])."""
    out = Path(out_dir)
    paths = [
        write_bytes(out / "beyond.csv", result.cells.to_csv(index=False).encode()),
        write_bytes(out / "beyond.md", to_markdown(result).encode()),
    ]
    for name, frame in (
        ("pairs", result.pairs),
        ("classes", result.classes),
        ("exemplars", result.exemplars),
        ("missing", result.missing),
        ("skipped", result.skipped),
    ):
        paths.append(write_bytes(out / f"beyond_{name}.csv", frame.to_csv(index=False).encode()))
    groups = result.cells[["arch", "mode", "solver"]].drop_duplicates()
    for g in groups.itertuples():
        several = (groups["arch"].eq(g.arch) & groups["mode"].eq(g.mode)).sum() > 1
        group = Group(g.arch, g.mode, g.solver if several else None)
        try:
            paths.extend(save(beyond_figure(result.cells, g.arch, g.mode, group.solver), out / f"beyond_{group.stem}"))
        except FigureNotApplicable as exc:
            log.info("figure beyond_%s skipped: %s", safe_name(group.stem), exc)
    log.info("wrote %d beyond-accuracy file(s) to %s", len(paths), out)
    return paths


__all__ = ["Beyond", "SavedFigure", "beyond", "beyond_figure", "to_markdown", "write_beyond"]
