"""The low-data regime's tables and figure: accuracy against the number of training images, per method and
sparsity (runs of ``--train-size``/``--train-per-class`` beside those on the whole training split).

The leaderboards keep one training-set size per cell (``select.one_train_size``); here every size is a column:
``low_data_<arch>_<mode>.md/.csv`` holds the mean primary metric (in %) over seeds and over the tasks that have
every size of the table, with the seed count, and ``low_data_<arch>_<mode>.png/pdf`` draws it, one panel per task.
The whole training split is the column ``all``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..atomic import write_bytes
from .render import fmt_sparsity, markdown_table
from .select import families, full_split_first, safe_name

ALL = "all"


def low_data_frames(runs: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (arch family, mode) that has low-data runs: one row per (task, method, sparsity, size) with the mean
    and standard deviation of the primary metric over seeds and the seed count. ``size`` is the number of training
    images, ``ALL`` for the whole split."""
    if "train_size" not in runs.columns:
        return {}
    ours = runs[runs["mode"].isin(("linear", "full"))]
    ours = ours.assign(arch=families(ours["arch"]), sparsity=ours["target_sparsity"].astype(float).round(6))
    frames = {}
    for (arch, mode), df in ours.groupby(["arch", "mode"], sort=True):
        if not (df["train_size"] > 0).any():
            continue
        df = full_split_first(df, f"{arch}/{mode} low-data")
        table = (df.groupby(["task", "method", "sparsity", "train_size"])["primary"]
                 .agg(mean="mean", std="std", n="count").reset_index())
        frames[(str(arch), str(mode))] = table
    return frames


def size_label(size: int) -> str:
    return ALL if size == 0 else str(int(size))


def low_data_markdown(table: pd.DataFrame, arch: str, mode: str) -> str:
    """Methods x sparsities (rows) by training-set size (columns): the mean over tasks of each task's seed mean."""
    sizes = sorted(table["train_size"].unique(), key=lambda s: math.inf if s == 0 else s)
    cells = table.groupby(["method", "sparsity", "train_size"]).agg(mean=("mean", "mean"), tasks=("task", "nunique"),
                                                                     n=("n", "min"))
    rows = []
    for (method, sparsity), group in cells.groupby(level=[0, 1], sort=True):
        row = [method, fmt_sparsity(sparsity)]
        for size in sizes:
            key = (method, sparsity, size)
            row.append(f"{100 * group.loc[key, 'mean']:.2f} (n={group.loc[key, 'n']})" if key in group.index else "–")
        rows.append(row)
    header = ["method", "sparsity", *[f"{size_label(s)} images" if s else "all images" for s in sizes]]
    tasks = ", ".join(sorted(table["task"].unique()))
    return (f"# Low-data regime: {arch}, {mode}\n\nMean accuracy (%) over seeds, then over the tasks ({tasks}); n: "
            "the fewest seeds of a task in the cell.\n\n" + markdown_table(header, rows, left=("method", "sparsity"))
            + "\n")


def write_low_data_tables(runs: pd.DataFrame, out: Path) -> list[Path]:
    """``low_data_<arch>_<mode>.csv/.md`` in ``out`` for every (arch, mode) with low-data runs."""
    written = []
    for (arch, mode), table in low_data_frames(runs).items():
        stem = f"low_data_{safe_name(arch)}_{mode}"
        written.append(write_bytes(Path(out) / f"{stem}.csv", table.to_csv(index=False).encode()))
        written.append(write_bytes(Path(out) / f"{stem}.md", low_data_markdown(table, arch, mode).encode()))
    return written


def write_low_data_figures(runs: pd.DataFrame, out: Path) -> list[Path]:
    """``low_data_<arch>_<mode>.png/.pdf`` in ``out`` for every (arch, mode) with low-data runs."""
    written = []
    for (arch, mode), table in low_data_frames(runs).items():
        written.extend(low_data_figure(table, arch, mode, Path(out) / f"low_data_{safe_name(arch)}_{mode}"))
    return written


def low_data_figure(table: pd.DataFrame, arch: str, mode: str, stem: Path) -> list[Path]:
    """Accuracy against training images (log scale; the whole split at the right, marked ``all``), one line per
    (method, sparsity) with seed-std bars, one panel per task."""
    from .figstyle import new_figure, paper_style, save

    tasks = sorted(table["task"].unique())
    sizes = sorted(s for s in table["train_size"].unique() if s > 0)
    whole_at = max(sizes) * 4 if sizes else 1  # where "all" sits on the log axis
    with paper_style():
        fig = new_figure(width=2.6 * len(tasks) + 1.4, height=2.6)
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
        for ax, task in zip(axes, tasks, strict=True):
            data = table[table["task"] == task]
            for (method, sparsity), line in data.groupby(["method", "sparsity"], sort=True):
                line = line.assign(x=line["train_size"].where(line["train_size"] > 0, whole_at)).sort_values("x")
                ax.errorbar(line["x"], 100 * line["mean"], yerr=100 * line["std"].fillna(0), marker="o", ms=3,
                            capsize=2, label=f"{method} {fmt_sparsity(sparsity)}")
            ax.set_xscale("log")
            ticks = [*sizes, whole_at] if (data["train_size"] == 0).any() else sizes
            ax.set_xticks(ticks, [size_label(s) if s != whole_at else ALL for s in ticks])
            ax.set_title(task, fontsize=8)
            ax.set_xlabel("training images")
        axes[0].set_ylabel(f"{mode} accuracy (%)")
        axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.suptitle(f"Low-data regime ({arch}, {mode})", fontsize=8)
        return save(fig, stem)
