"""Paper figures from the collected runs (seaborn/matplotlib, headless; PNG at dpi 200 and PDF).

Each figure has a builder (``*_figure``, returns the matplotlib Figure) and a ``plot_*`` function that builds it
and writes ``<stem>.png`` and ``<stem>.pdf``, returning the paths (a list) with the Figure as ``.figure``.
Every number comes from :func:`leaderboard`, so figures and tables always agree. Methods keep one colour,
marker and line style everywhere (``palette.method_style``); artists drawn for a method carry
``gid="method:<name>"`` (``method:<name>:paper`` for the paper's results).

``source`` chooses our runs (``ours``), the paper's (``paper``) or both (``both``): the accuracy-vs-sparsity figure
then draws the paper's results in the same colours with open markers and dotted lines, and the heatmap has one
row per (method, sparsity, source); the rank and upstream figures are drawn once per source. A figure of one source
draws it in the methods' own styles, so a method looks the same in every figure of a report.

Methods are named by their display names (``palette.display_name``; ``labels`` maps a method to other text, as
``--label KEY=TEXT`` does). When a few points lie far below the rest (the paper's LTH-T at 90-95% in linear
transfer), the accuracy-vs-sparsity figure moves them to a short panel under a broken axis, so the main panel keeps
the range where the methods differ; the upstream-vs-transfer figure places each point's label where it overlaps no
other label or point (greedy, :func:`place_labels`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..vocabulary import format_sparsity
from .figstyle import COLUMN_WIDTH_IN, PAGE_WIDTH_IN, FigureNotApplicable, SavedFigure, new_figure, paper_style, save
from .leaderboard import DENSE, MEAN, SOURCE_SUFFIX, group_sources, leaderboard, resolve_source
from .palette import DENSE_LINESTYLE, display_name, method_style, order_methods, use_methods
from .select import BOTH, METRIC_LABELS, OURS, PAPER, filter_source, in_family, metric_column, report_groups, safe_name

PAPER_LINESTYLE = ":"

log = logging.getLogger("transferbench")

LEGEND_COLUMNS = 3
LONG_LABEL = 14  # characters: a legend with a longer entry has one column fewer, so it fits the column width
OUTLIER_IQR = 1.5  # Tukey's fence: points this many IQRs below the lower quartile go to the outlier panel
MAIN_SHARE = 0.3  # ... when the rest then spans at most this share of the whole range
CLOSE_TICKS = 3.0  # sparsities (in %) closer than this get their tick labels on two lines (89 and 90)
Labels = Mapping[str, str] | None  # method → the text a figure shows (``--label``); display names otherwise


def _label(metric: str) -> str:
    return METRIC_LABELS[metric_column(metric)]


def _pct(sparsity: float) -> str:
    return format_sparsity(sparsity)


def _row_label(method: str, sparsity: float, labels: Labels = None) -> str:
    name = display_name(method, labels)
    return name if method == DENSE else f"{name} {_pct(sparsity)}"


def _tasks(n: int) -> str:
    return f"{n} task{'s' if n != 1 else ''}"


def _title(arch: str, mode: str, solver: str | None, source: str | None = None) -> str:
    origin = {PAPER: " · paper", BOTH: " · ours vs paper"}.get(source or "", "")
    return f"{arch} · {mode}" + (f" ({solver})" if solver else "") + origin


def _tag(source: str) -> str:
    return " (paper)" if source == PAPER else ""


def _by_source(table: pd.DataFrame, source: str | None) -> dict[str, pd.DataFrame]:
    """A leaderboard table split by source, each indexed (method, sparsity)."""
    if source != BOTH:
        return {source or OURS: table}
    return {s: table.xs(s, level="source") for s in (OURS, PAPER) if s in table.index.get_level_values("source")}


def _legend_below(fig: Figure, ax, n_entries: int) -> None:
    handles, labels = ax.get_legend_handles_labels()
    columns = LEGEND_COLUMNS if max(map(len, labels), default=0) <= LONG_LABEL else LEGEND_COLUMNS - 1
    fig.legend(handles, labels, loc="outside lower center", ncols=min(columns, max(n_entries, 1)),
               frameon=False, handlelength=2.2, columnspacing=1.0)


def _deviation_legend(lb) -> str:
    """A second title line when our side of a side-by-side figure holds runs off the paper's protocol
    (``--include-deviating``), else ""."""
    if lb.deviating is None or not lb.deviating.to_numpy().any():
        return ""
    shown = "; ".join(lb.deviations[:3]) + ("; ..." if len(lb.deviations) > 3 else "")  # a title line, not a list
    return f"\nours include runs off the paper's protocol: {shown}"


def _warn_incomplete(lb, what: str) -> None:
    missing = lb.table.index[lb.table[(MEAN, "mean")].isna()]
    if len(missing):
        # a side-by-side leaderboard's rows are (method, sparsity, source)
        # code names in the log: what a user types to select the runs
        labels = [(row[0] if row[0] == DENSE else f"{row[0]} {_pct(row[1])}") + (_tag(row[2]) if lb.side_by_side
                                                                                else "") for row in missing]
        log.warning("%s: %s leaves out %d (method, sparsity) row(s) with a missing task: %s", _title(
            lb.arch, lb.mode, lb.solver), what, len(missing), ", ".join(labels))


def accuracy_vs_sparsity_figure(
    runs: pd.DataFrame, arch: str, mode: str, *, metric: str = "primary", solver: str | None = None,
    source: str | None = None, labels: Labels = None,
) -> Figure:
    """x = target sparsity, y = mean over tasks of the per-task mean, one line per method (± the leaderboard's
    sqrt(Σ_t s_t²)/T from the per-task stds); dense as a dashed horizontal line with its ± as a band. Points far
    below the rest are drawn in a short panel under a broken axis (:func:`split_range`)."""
    lb = leaderboard(runs, arch, mode, metric, solver=solver, source=source)
    _warn_incomplete(lb, "accuracy vs sparsity")
    parts = {s: t[MEAN].dropna(subset=["mean"]) for s, t in _by_source(lb.table, source).items()}
    parts = {s: t for s, t in parts.items() if not t.empty}
    if not parts:
        raise FigureNotApplicable(f"{_title(arch, mode, solver, source)}: no (method, sparsity) has every task")
    n_entries = sum(len(set(t.index.get_level_values("method"))) for t in parts.values())
    split = split_range([float(v) for t in parts.values() for v in t["mean"]])
    with paper_style():
        fig = new_figure(COLUMN_WIDTH_IN, 2.3 + 0.15 * math.ceil(n_entries / LEGEND_COLUMNS) + 0.5 * bool(split))
        if split:
            ax, low_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        else:
            ax, low_ax = fig.add_subplot(), None
        limits = _panel_limits(*split) if split else (None, None)
        xs: set[float] = set()
        for src, agg in parts.items():
            for target, keep in ((ax, limits[0]), (low_ax, limits[1])) if low_ax is not None else ((ax, None),):
                xs.update(_draw_accuracy(target, agg, src, side_by_side=source == BOTH, labels=labels,
                                         gids=target is ax, keep=keep))
        if xs:
            ticks = sorted(xs)
            (low_ax or ax).set_xticks(ticks, _tick_labels(ticks))
        (low_ax or ax).set_xlabel("Target sparsity (%)")
        ylabel = f"Mean {_label(metric)} (%)\nover {_tasks(len(lb.tasks))}"
        if split and low_ax is not None:
            _break_axes(ax, low_ax, *limits)
            fig.supylabel(ylabel, fontsize=8)
        else:
            ax.set_ylabel(ylabel)
        ax.set_title(_title(arch, mode, solver, source) + _deviation_legend(lb))
        _legend_below(fig, ax, n_entries)
    return fig


def _tick_labels(ticks: list[float]) -> list[str]:
    """``f"{t:g}"`` per tick; a tick close to the previous one has its label on a second line, so that close
    sparsities (STR's 89% next to 90%) do not print over each other."""
    out: list[str] = []
    for i, t in enumerate(ticks):
        lowered = i > 0 and t - ticks[i - 1] < CLOSE_TICKS and not out[-1].startswith("\n")
        out.append(("\n" if lowered else "") + f"{t:g}")
    return out


def split_range(values: list[float]) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(main y-range, outlier y-range) when a few values lie far below the rest: below Tukey's fence (lower
    quartile − 1.5 IQR) while the others span at most 30% of the whole range; None otherwise (one panel)."""
    v = np.sort(np.asarray([x for x in values if math.isfinite(x)], dtype=float))
    if len(v) < 5:
        return None
    q1, q3 = np.percentile(v, [25, 75])
    fence = q1 - OUTLIER_IQR * max(q3 - q1, 1e-9)
    low, main = v[v < fence], v[v >= fence]
    if not len(low) or main.max() - main.min() > MAIN_SHARE * (v.max() - v.min()):
        return None
    return (float(main.min()), float(main.max())), (float(low.min()), float(low.max()))


def _panel_limits(main: tuple[float, float], low: tuple[float, float]) -> tuple[tuple[float, float], ...]:
    """The y-limits of the main and the outlier panel: each range with a margin."""
    pad_main = max(0.15 * (main[1] - main[0]), 0.5)
    pad_low = max(0.15 * (low[1] - low[0]), 0.5)
    return (main[0] - pad_main, main[1] + pad_main), (low[0] - pad_low, low[1] + pad_low)


def _break_marks(slash: list[tuple[float, float]]) -> dict:
    """The plot style of a broken axis's diagonal marks, drawn with ``slash`` as the marker path."""
    return {"marker": slash, "markersize": 6, "linestyle": "none", "color": "0.3", "mec": "0.3", "mew": 0.8,
            "clip_on": False}


def _break_axes(ax, low_ax, main: tuple[float, float], low: tuple[float, float]) -> None:
    """Show ``main`` on ``ax`` and ``low`` on ``low_ax`` below it, with the diagonal marks of a broken axis."""
    ax.set_ylim(*main)
    low_ax.set_ylim(*low)
    ax.spines["bottom"].set_visible(False)
    low_ax.spines["top"].set_visible(False)
    ax.tick_params(axis="x", which="both", bottom=False, labelbottom=False)
    marks = _break_marks([(-1, -0.5), (1, 0.5)])
    ax.plot([0, 1], [0, 0], transform=ax.transAxes, **marks)
    low_ax.plot([0, 1], [1, 1], transform=low_ax.transAxes, **marks)


def _draw_accuracy(ax, agg: pd.DataFrame, source: str, *, side_by_side: bool = False, labels: Labels = None,
                   gids: bool = True, keep: tuple[float, float] | None = None) -> set[float]:
    """One source's lines in the methods' styles; next to our runs (``side_by_side``) the paper's are drawn in the
    same colours, open markers and dotted. ``gids`` marks the artists (off for a second, outlier panel); only the
    points inside ``keep`` (a panel's y-limits) get a marker and error bar, so none peeks in at a panel's edge."""
    xs: set[float] = set()
    paper = source == PAPER and side_by_side
    tag = _tag(source) if side_by_side else ""
    for method in order_methods(agg.index.get_level_values("method")):
        sub = agg.xs(method, level="method")
        style = method_style(method)
        gid = (f"method:{method}" + (":paper" if source == PAPER else "")) if gids else None
        label = display_name(method, labels) + tag if gids else None
        if method == DENSE:
            mean, std = float(sub["mean"].iloc[0]), float(sub["std"].iloc[0])
            ax.axhline(mean, color=style.color, linestyle=PAPER_LINESTYLE if paper else DENSE_LINESTYLE,
                       label=label, zorder=1, gid=gid)
            if math.isfinite(std):
                ax.axhspan(mean - std, mean + std, color=style.color, alpha=0.08 if paper else 0.15, linewidth=0,
                           zorder=0)
            continue
        x = sub.index.to_numpy() * 100
        xs.update(x.tolist())
        y, err = sub["mean"].to_numpy(), sub["std"].fillna(0.0).to_numpy()
        shown = np.ones(len(y), bool) if keep is None else (y >= keep[0]) & (y <= keep[1])
        ax.plot(x, y, color=style.color, marker=style.marker, markevery=list(np.flatnonzero(shown)),
                linestyle=PAPER_LINESTYLE if paper else style.linestyle, label=label, zorder=2, gid=gid,
                markerfacecolor="white" if paper else style.color)
        if shown.any():
            ax.errorbar(x[shown], y[shown], yerr=err[shown], fmt="none", ecolor=style.color, capsize=2,
                        elinewidth=0.7, zorder=2)
    return xs


def plot_accuracy_vs_sparsity(
    runs: pd.DataFrame, arch: str, mode: str, out_path_stem: str | Path, *, metric: str = "primary",
    solver: str | None = None, source: str | None = None, labels: Labels = None,
) -> SavedFigure:
    fig = accuracy_vs_sparsity_figure(runs, arch, mode, metric=metric, solver=solver, source=source, labels=labels)
    return save(fig, out_path_stem)


def delta_heatmap_figure(
    runs: pd.DataFrame, arch: str, mode: str, *, metric: str = "primary", solver: str | None = None,
    source: str | None = None, labels: Labels = None,
) -> Figure:
    """Per-task (and mean) Δ vs dense in percentage points for each sparse (method, sparsity) row; with both
    sources, each source's rows against its own dense row."""
    import seaborn as sns

    lb = leaderboard(runs, arch, mode, metric, solver=solver, allow_incomplete_mean=False, source=source)
    title = _title(arch, mode, solver, source)
    deltas = []
    for src, table in _by_source(lb.table, source).items():
        means = table.xs("mean", level="stat", axis=1)[[*lb.tasks, MEAN]]
        dense_rows = [r for r in means.index if r[0] == DENSE]
        if not dense_rows:
            log.info("%s: no dense row for %s, left out of the heatmap", title, src)
            continue
        delta = means.drop(index=dense_rows) - means.loc[dense_rows[0]]
        delta.index = [_row_label(m, s, labels) + (_tag(src) if source == BOTH else "") for m, s in delta.index]
        deltas.append(delta)
    if not deltas:
        raise FigureNotApplicable(f"{title}: no dense runs to compare with")
    delta = pd.concat(deltas)
    if delta.empty or delta.isna().all().all():
        raise FigureNotApplicable(f"{title}: no sparse row shares a task with dense")
    vmax, clipped = colour_limit(delta.to_numpy())
    with paper_style():
        width = min(PAGE_WIDTH_IN, max(COLUMN_WIDTH_IN, 1.9 + 0.42 * delta.shape[1]))
        fig = new_figure(width, max(1.8, 1.0 + 0.2 * len(delta)))
        ax = fig.add_subplot()
        with warnings.catch_warnings():  # seaborn 0.13 calls Colormap.set_bad, deprecated in matplotlib 3.11
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(delta, ax=ax, cmap="RdBu", center=0.0, vmin=-vmax, vmax=vmax, annot=True, fmt="+.1f",
                        annot_kws={"fontsize": 7}, linewidths=0.5, linecolor="white",
                        cbar_kws={"label": "Δ vs dense (pp)", "pad": 0.02, "extend": "both" if clipped else "neither"})
        ax.axvline(len(lb.tasks), color="black", linewidth=1.0)
        ax.grid(False)  # missing cells stay blank
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="both", length=0)
        ax.tick_params(axis="x", rotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
        ax.set_title(f"{title}: {_label(metric)} − dense (pp)" + _deviation_legend(lb))
    return fig


def colour_limit(values: np.ndarray) -> tuple[float, bool]:
    """(the heatmap's ± colour limit, whether cells beyond it are clipped): the largest |Δ|, unless a few cells
    are far beyond the rest (:func:`split_range` on |Δ|, e.g. LTH-T at 95%): then the largest of the others, so
    that the colours still tell the other rows apart; every cell keeps its number."""
    size = np.abs(values[np.isfinite(values)])
    if not size.size:
        return 1.0, False
    split = split_range([-x for x in size])  # far-out large |Δ| are the low outliers of −|Δ|
    if split is None:
        return float(size.max()) or 1.0, False
    return max(-split[0][0], 1.0), True


def plot_delta_heatmap(
    runs: pd.DataFrame, arch: str, mode: str, out_path_stem: str | Path, *, metric: str = "primary",
    solver: str | None = None, source: str | None = None, labels: Labels = None,
) -> SavedFigure:
    fig = delta_heatmap_figure(runs, arch, mode, metric=metric, solver=solver, source=source, labels=labels)
    return save(fig, out_path_stem)


def _spearman(x, y) -> tuple[float, float]:
    from scipy.stats import spearmanr

    if len(x) < 3:
        return math.nan, math.nan
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def linear_vs_full_ranks_figure(
    runs: pd.DataFrame, arch: str, *, metric: str = "primary", linear_solver: str | None = None,
    source: str | None = None, labels: Labels = None,
) -> Figure:
    """Slopegraph: the rank (1 = best mean accuracy) of each (method, sparsity) under linear and full transfer."""
    runs = filter_source(runs, source)
    lin = leaderboard(runs, arch, "linear", metric, solver=linear_solver).table[(MEAN, "mean")]
    full = leaderboard(runs, arch, "full", metric).table[(MEAN, "mean")]
    both = pd.concat({"linear": lin, "full": full}, axis=1).dropna()
    if len(both) < 2:
        raise FigureNotApplicable(f"{arch}: fewer than two (method, sparsity) rows complete in both modes")
    ranks = both.rank(ascending=False, method="min")
    rho, _ = _spearman(both["linear"], both["full"])
    rows = sorted(ranks.index, key=lambda r: (ranks.loc[r, "linear"], r[1]))
    with paper_style():
        fig = new_figure(COLUMN_WIDTH_IN, max(2.0, 0.8 + 0.16 * len(rows)))
        ax = fig.add_subplot()
        for method, sparsity in rows:
            r_lin, r_full = ranks.loc[(method, sparsity), "linear"], ranks.loc[(method, sparsity), "full"]
            style = method_style(method)
            ax.plot([0, 1], [r_lin, r_full], color=style.color, marker=style.marker, linestyle=style.linestyle,
                    gid=f"method:{method}")
            label = _row_label(method, sparsity, labels)
            ax.text(-0.08, r_lin, f"{label}  {r_lin:g}", ha="right", va="center", fontsize=7)
            ax.text(1.08, r_full, f"{r_full:g}  {label}", ha="left", va="center", fontsize=7)
        ax.set_xlim(-1.25, 2.25)
        ax.set_ylim(len(rows) + 0.5, 0.5)
        ax.set_xticks([0, 1], [f"linear{f' ({linear_solver})' if linear_solver else ''}", "full"])
        ax.xaxis.tick_top()
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        rho_text = "n/a" if math.isnan(rho) else f"{rho:.2f}"
        ax.set_title(f"{arch}{_tag(source or OURS)}: rank by mean {_label(metric)} (1 = best)\nSpearman ρ = {rho_text}")
    return fig


def plot_linear_vs_full_ranks(
    runs: pd.DataFrame, arch: str, out_path_stem: str | Path, *, metric: str = "primary",
    linear_solver: str | None = None, source: str | None = None, labels: Labels = None,
) -> SavedFigure:
    fig = linear_vs_full_ranks_figure(runs, arch, metric=metric, linear_solver=linear_solver, source=source,
                                      labels=labels)
    return save(fig, out_path_stem)


def upstream_transfer_points(
    runs: pd.DataFrame, arch: str, mode: str, *, metric: str = "primary", solver: str | None = None,
    source: str | None = None,
) -> pd.DataFrame:
    """Per (method, sparsity): ``upstream`` ImageNet top-1 (%) and ``transfer`` task-mean accuracy (%), both
    known. The upstream top-1 is a property of the checkpoint, so it is read from the arch's runs of any mode."""
    runs = filter_source(runs, source)
    transfer = leaderboard(runs, arch, mode, metric, solver=solver).table[(MEAN, "mean")]
    own = runs[in_family(runs, arch)]
    upstream = (own.assign(sparsity=own["target_sparsity"].round(6))
                .groupby(["method", "sparsity"])["upstream_top1"].mean() * 100)
    return pd.concat({"upstream": upstream, "transfer": transfer}, axis=1).dropna()


def upstream_vs_transfer_figure(
    runs: pd.DataFrame, arch: str, mode: str, *, metric: str = "primary", solver: str | None = None,
    source: str | None = None, labels: Labels = None,
) -> Figure:
    """Scatter of ImageNet top-1 vs task-mean transfer accuracy, one point per (method, sparsity), each sparse
    point labelled with its sparsity where the label overlaps nothing; the title has the Spearman rank
    correlation. Checkpoints far below the others upstream (at chance, :func:`split_range` on the x values) are
    drawn in a narrow panel left of a broken x-axis, so that the others do not crowd into one corner."""
    pts = upstream_transfer_points(runs, arch, mode, metric=metric, solver=solver, source=source)
    if len(pts) < 3:
        raise FigureNotApplicable(f"{_title(arch, mode, solver, source)}: upstream top-1 known for {len(pts)} complete "
                                  "(method, sparsity) row(s); 3 needed")
    rho, p = _spearman(pts["upstream"], pts["transfer"])
    methods = order_methods(pts.index.get_level_values("method"))
    split = split_range([float(x) for x in pts["upstream"]])
    title = f"{_title(arch, mode, solver, source)}\nSpearman ρ = {rho:.2f} (p = {p:.2g}, n = {len(pts)})"
    with paper_style():
        fig = new_figure(COLUMN_WIDTH_IN, 2.5 + 0.15 * math.ceil(len(methods) / LEGEND_COLUMNS))
        if split:
            grid = fig.add_gridspec(1, 2, width_ratios=[1, 3])
            ax = fig.add_subplot(grid[0, 1])  # the main panel is the first axes, as without a split
            low_ax = fig.add_subplot(grid[0, 0], sharey=ax)
            limits = _panel_limits(*split)
            panels = [(ax, limits[0]), (low_ax, limits[1])]
        else:
            ax, low_ax = fig.add_subplot(), None
            panels = [(ax, None)]
        texts = []
        for method in methods:
            sub = pts.xs(method, level="method")
            style = method_style(method)
            for target, _ in panels:
                main = target is ax
                target.scatter(sub["upstream"], sub["transfer"], color=style.color, marker=style.marker, s=18,
                               label=display_name(method, labels) if main else None, zorder=2,
                               gid=f"method:{method}" if main else None)
            if method != DENSE:
                texts += [(_pct(sparsity).rstrip("%"), (row["upstream"], row["transfer"]))
                          for sparsity, row in sub.iterrows()]
        ax.set_ylabel(f"Mean transfer {_label(metric)} (%)")
        if low_ax is not None:
            _break_x(low_ax, ax, limits[1], limits[0])
            fig.suptitle(title, fontsize=8)
        else:
            ax.set_title(title)
        ax.set_xlabel("Upstream top-1 (%)")  # ImageNet for the paper's checkpoints
        _legend_below(fig, ax, len(methods))
        for target, lim in panels:
            inside = [t for t in texts if lim is None or lim[0] <= t[1][0] <= lim[1]]
            place_labels(target, inside, fontsize=7, color="0.3")
    return fig


def _break_x(low_ax, ax, low: tuple[float, float], main: tuple[float, float]) -> None:
    """``low`` on ``low_ax`` left of ``ax`` showing ``main``, with the diagonal marks of a broken x-axis."""
    low_ax.set_xlim(*low)
    ax.set_xlim(*main)
    low_ax.set_ylabel(ax.get_ylabel())
    ax.set_ylabel("")
    low_ax.spines["right"].set_visible(False)
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", which="both", left=False, labelleft=False)
    marks = _break_marks([(-0.5, -1), (0.5, 1)])
    low_ax.plot([1, 1], [0, 1], transform=low_ax.transAxes, **marks)
    ax.plot([0, 0], [0, 1], transform=ax.transAxes, **marks)


# label offsets tried in order, in points from the point: right, left, above, below, then the diagonals, farther
LABEL_OFFSETS = [(4, -3), (-4, -3), (0, 4), (0, -10)] + [(dx * k, dy * k) for k in (1, 2) for dx, dy in
                                                         ((4, 3), (-4, 3), (4, -8), (-4, -8))] + [(10, -3), (-10, -3)]


LEADER = {"arrowstyle": "-", "color": "0.6", "linewidth": 0.4, "shrinkA": 0, "shrinkB": 3}  # far labels


def place_labels(ax, texts: list[tuple[str, tuple[float, float]]], **kwargs) -> list:
    """Annotate each (text, (x, y)) at the first offset of LABEL_OFFSETS whose box overlaps no label placed
    before it, no point of ``texts`` and stays inside the axes; the first offset when none does. Greedy, in the
    order given. Returns the annotations."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    fig = ax.figure
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # layout first: boxes are measured in display units
    renderer = canvas.get_renderer()
    to_px = ax.transData.transform
    points = [to_px(xy) for _, xy in texts]
    frame = ax.get_window_extent(renderer)
    dots = fig.dpi / 72
    taken: list = []
    placed = []
    for text, xy in texts:
        chosen = None
        for dx, dy in LABEL_OFFSETS:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            ann = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, **kwargs,
                              arrowprops=LEADER if abs(dx) + abs(dy) > 10 else None)
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer).expanded(1.05, 1.1)  # the text's box, not its leader
            clear = (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
                     and not any(box.overlaps(b) for b in taken)
                     and not any(box.x0 - 3 * dots <= px <= box.x1 + 3 * dots
                                 and box.y0 - 3 * dots <= py <= box.y1 + 3 * dots for px, py in points))
            if clear or chosen is None:
                if chosen is not None:
                    chosen[0].remove()
                chosen = (ann, box)
                if clear:
                    break
            else:
                ann.remove()
        taken.append(chosen[1])
        placed.append(chosen[0])
    return placed


def plot_upstream_vs_transfer(
    runs: pd.DataFrame, arch: str, mode: str, out_path_stem: str | Path, *, metric: str = "primary",
    solver: str | None = None, source: str | None = None, labels: Labels = None,
) -> SavedFigure:
    fig = upstream_vs_transfer_figure(runs, arch, mode, metric=metric, solver=solver, source=source, labels=labels)
    return save(fig, out_path_stem)


def write_figures(
    runs: pd.DataFrame, out_dir: str | Path, metric: str = "primary", source: str | None = None,
    labels: Labels = None,
) -> list[Path]:
    """Every applicable figure for every (arch, mode) in ``runs``; figures that do not apply are logged.

    File stems end in ``_paper`` for the paper's results and ``_ours_vs_paper`` for both side by side; with
    ``source="both"`` the rank and upstream figures are drawn once per source. Every method of ``runs`` keeps one
    colour in all of them (``palette.use_methods``); ``labels`` renames methods (``--label``)."""
    out = Path(out_dir)
    paths: list[Path] = []
    source = resolve_source(runs, source)
    if "method" in runs.columns:
        use_methods(runs["method"].dropna().astype(str))

    def attempt(name: str, fn, *args, **kwargs) -> None:
        try:
            paths.extend(fn(*args, labels=labels, **kwargs))
        except FigureNotApplicable as exc:
            log.info("figure %s skipped: %s", name, exc)
        except ValueError as exc:
            log.warning("figure %s not drawn: %s", name, exc)

    groups = report_groups(runs)
    for g in groups:
        for src in group_sources(runs, g, source):
            for name, fn in (("accuracy_vs_sparsity", plot_accuracy_vs_sparsity),
                             ("delta_heatmap", plot_delta_heatmap)):
                stem = f"{g.stem}{SOURCE_SUFFIX[src]}_{name}"
                attempt(stem, fn, runs, g.arch, g.mode, out / stem, metric=metric, solver=g.solver, source=src)
            for single in [OURS, PAPER] if src == BOTH else [src]:
                stem = f"{g.stem}{SOURCE_SUFFIX[single]}_upstream_vs_transfer"
                attempt(stem, plot_upstream_vs_transfer, runs, g.arch, g.mode, out / stem, metric=metric,
                        solver=g.solver, source=single)
    for g in groups:
        if g.mode == "linear" and any(f.arch == g.arch and f.mode == "full" for f in groups):
            base = "_".join(safe_name(p) for p in (g.arch, *([g.solver] if g.solver else [])))
            singles = [OURS, PAPER] if source == BOTH else [source]
            for single in singles:
                own = filter_source(runs, single)
                if set(own.loc[in_family(own, g.arch), "mode"]) >= {"linear", "full"}:
                    stem = f"{base}{SOURCE_SUFFIX[single]}_linear_vs_full_ranks"
                    attempt(stem, plot_linear_vs_full_ranks, runs, g.arch, out / stem, metric=metric,
                            linear_solver=g.solver, source=single)
    if source != PAPER:  # the paper has no low-data runs
        from .low_data import write_low_data_figures

        paths.extend(write_low_data_figures(filter_source(runs, OURS), out))
    log.info("wrote %d figure file(s) to %s", len(paths), out)
    return paths
