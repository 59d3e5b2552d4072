"""The bias study's figures (``transferbench report bias``), one set per (task, arch, mode[, solver]), in the
report's style (``figstyle``) and method colours (``palette``):

- ``ba_<group>``: the mean bias amplification towards each identity attribute against target sparsity, one line per
  method with a band of ± one std over seeds, dense as a horizontal reference line (its band likewise);
- ``uncertainty_<group>``: the uncertainty U and the interdependence R² against sparsity, drawn alike;
- ``countermeasure_<group>``: the BA per identity at t = 0 (solid) and with thresholds fitted on validation
  (dotted, hollow markers), per method and for dense;
- ``criteria_<group>``: a heat map of the Spearman ρ across attributes between each dense-only predictor and the
  BA increase of each sparse cell and identity (t = 0).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..bias import ba_column
from .bias import GROUP_KEYS, PREDICTOR_LABELS, PREDICTORS, BiasStudy
from .figstyle import COLUMN_WIDTH_IN, PAGE_WIDTH_IN, FigureNotApplicable, new_figure, paper_style, save
from .palette import DENSE, DENSE_COLOR, DENSE_LINESTYLE, display_name, method_style, order_methods
from .render import fmt_sparsity
from .select import safe_name

log = logging.getLogger("transferbench")

FITTED_LINESTYLE = ":"  # the thresholds fitted on validation, beside the solid t = 0 lines
BAND_ALPHA = 0.15  # the ± one std band over seeds
Group = tuple[str, str, str, str]  # (task, arch, mode, solver)
UNCERTAINTY_PANELS = [("uncertainty", "Uncertainty U (%)", 100.0), ("interdependence", "Interdependence R²", 1.0)]


def _group_rows(frame: pd.DataFrame, group: Group, thresholds: str | None = "zero") -> pd.DataFrame:
    rows = frame[(frame[GROUP_KEYS] == pd.Series(group, index=GROUP_KEYS)).all(axis=1)]
    return rows if thresholds is None else rows[rows["thresholds"] == thresholds]


def _title(group: Group) -> str:
    task, arch, mode, solver = group
    return f"{task} · {arch} · {mode}" + (f" ({solver})" if solver != "sgd" else "")


def _draw_methods(ax: Axes, runs: pd.DataFrame, column: str, scale: float, *, fitted: bool = False) -> None:
    """One line per sparse method: the mean over seeds at each sparsity, with a ± one std band."""
    for method in order_methods(runs.loc[runs["method"] != DENSE, "method"]):
        stats = runs[runs["method"] == method].groupby("sparsity")[column].agg(["mean", "std"]).dropna(subset=["mean"])
        if stats.empty:
            continue
        style = method_style(method)
        x, y, sd = stats.index * 100, stats["mean"] * scale, stats["std"].fillna(0) * scale
        ax.fill_between(x, y - sd, y + sd, color=style.color, alpha=BAND_ALPHA, linewidth=0)
        ax.plot(x, y, color=style.color, marker=style.marker, label=display_name(method),
                linestyle=FITTED_LINESTYLE if fitted else style.linestyle,
                markerfacecolor="none" if fitted else style.color)


def _draw_dense(ax: Axes, runs: pd.DataFrame, column: str, scale: float, *, fitted: bool = False) -> None:
    """Dense as a horizontal line at its mean over seeds, with a ± one std band."""
    values = runs.loc[runs["method"] == DENSE, column].dropna() * scale
    if values.empty:
        return
    mean, sd = values.mean(), values.std()
    ax.axhline(mean, color=DENSE_COLOR, linestyle=FITTED_LINESTYLE if fitted else DENSE_LINESTYLE,
               label=display_name(DENSE))
    if pd.notna(sd):
        ax.axhspan(mean - sd, mean + sd, color=DENSE_COLOR, alpha=BAND_ALPHA / 2, linewidth=0)


def _panels(count: int) -> tuple[Figure, list[Axes]]:
    fig = new_figure(COLUMN_WIDTH_IN if count == 1 else PAGE_WIDTH_IN, 2.4)
    return fig, list(fig.subplots(1, count, squeeze=False)[0])


def _legend(fig: Figure, ax: Axes, extra: list[Line2D] | None = None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    handles += extra or []
    labels += [h.get_label() for h in extra or []]
    fig.legend(handles, labels, loc="outside lower center", ncols=min(5, max(len(handles), 1)), frameon=False)


def _sparse_runs(study: BiasStudy, group: Group) -> pd.DataFrame:
    runs = _group_rows(study.runs, group, thresholds=None)
    if not (runs["method"] != DENSE).any():
        raise FigureNotApplicable(f"{_title(group)}: no sparse runs")
    return runs


def metric_vs_sparsity_figure(study: BiasStudy, group: Group, panels: list[tuple[str, str, float]]) -> Figure:
    """One panel per (column of ``study.runs``, y label, scale), against target sparsity, at t = 0."""
    runs = _group_rows(_sparse_runs(study, group), group)
    with paper_style():
        fig, axes = _panels(len(panels))
        for ax, (column, label, scale) in zip(axes, panels, strict=True):
            _draw_dense(ax, runs, column, scale)
            _draw_methods(ax, runs, column, scale)
            ax.set_xlabel("Target sparsity (%)")
            ax.set_ylabel(label)
        _legend(fig, axes[0])
        fig.suptitle(f"{_title(group)}: mean over attributes, ± std over seeds")
    return fig


def countermeasure_figure(study: BiasStudy, group: Group) -> Figure:
    """Per identity: BA at t = 0 and with fitted thresholds, against target sparsity."""
    runs = _sparse_runs(study, group)
    identities = study.identities[group[0]]
    with paper_style():
        fig, axes = _panels(len(identities))
        for ax, identity in zip(axes, identities, strict=True):
            for kind, fitted in (("zero", False), ("fitted", True)):
                rows = runs[runs["thresholds"] == kind]
                _draw_dense(ax, rows, ba_column(identity), 100.0, fitted=fitted)
                _draw_methods(ax, rows, ba_column(identity), 100.0, fitted=fitted)
            ax.set_xlabel("Target sparsity (%)")
            ax.set_ylabel(f"BA towards {identity} (pp)")
        # one entry per method (the t = 0 lines), then what the two line styles mean
        keep: dict[str, object] = {}
        for handle, label in zip(*axes[0].get_legend_handles_labels(), strict=True):
            keep.setdefault(label, handle)  # the t = 0 line, drawn first
        styles = [Line2D([], [], color="grey", linestyle="-", label="t = 0"),
                  Line2D([], [], color="grey", linestyle=FITTED_LINESTYLE, marker="o", markerfacecolor="none",
                         label="thresholds fitted on validation")]
        fig.legend([*keep.values(), *styles], [*keep, *(s.get_label() for s in styles)], loc="outside lower center",
                   ncols=min(5, len(keep) + 2), frameon=False)
        fig.suptitle(f"{_title(group)}: the threshold countermeasure")
    return fig


def criteria_figure(study: BiasStudy, group: Group) -> Figure:
    """Spearman ρ of each dense predictor with ΔBA across attributes (rows: sparse cell · identity), t = 0."""
    import seaborn as sns

    table = _group_rows(study.criteria, group)
    if table.empty or table["rho"].isna().all():
        raise FigureNotApplicable(f"{_title(group)}: no criteria (needs dense and sparse runs with defined BA)")
    table = table.assign(row=[f"{display_name(m)} {fmt_sparsity(s)} · {i}"
                              for m, s, i in zip(table["method"], table["sparsity"], table["identity"], strict=True)])
    rho = table.pivot_table(index="row", columns="predictor", values="rho", sort=False, dropna=False)
    rho = rho[list(PREDICTORS)].rename(columns=PREDICTOR_LABELS).dropna(how="all")  # e.g. an identity without BA
    with paper_style():
        fig = new_figure(COLUMN_WIDTH_IN + 0.6, max(1.8, 0.9 + 0.22 * len(rho)))
        ax = fig.add_subplot()
        with warnings.catch_warnings():  # seaborn 0.13 calls Colormap.set_bad, deprecated in matplotlib 3.11
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(rho, ax=ax, cmap="RdBu_r", center=0.0, vmin=-1, vmax=1, annot=True, fmt="+.2f",
                        annot_kws={"fontsize": 6}, linewidths=0.5, linecolor="white",
                        cbar_kws={"label": "Spearman ρ with ΔBA", "pad": 0.02})
        ax.grid(False)
        ax.set_xlabel("dense-only predictor")
        ax.set_ylabel("")
        ax.tick_params(axis="both", length=0)
        ax.set_title(f"{_title(group)}: dense criteria vs BA increase")
    return fig


FIGURES = ("ba", "uncertainty", "countermeasure", "criteria")  # each figure's file stem: <name>_<group>


def write_bias_figures(study: BiasStudy, out_dir: Path) -> list[Path]:
    """Every figure of every (task, arch, mode, solver) group, as PNG and PDF; a figure without data is skipped
    with a log line. Figures of a former write that this one did not draw (a group whose runs are gone) are
    removed, so that the folder shows the study as it is now."""
    paths = _draw(study, out_dir)
    written = set(paths)
    for stale in sorted(p for name in FIGURES for suffix in ("png", "pdf") for p in out_dir.glob(f"{name}_*.{suffix}")
                        if p not in written):
        stale.unlink()
        log.info("removed %s: no longer in the study", stale)
    return paths


def _draw(study: BiasStudy, out_dir: Path) -> list[Path]:
    paths: list[Path] = []
    for group in study.runs[GROUP_KEYS].drop_duplicates().itertuples(index=False):
        group = tuple(group)
        stem = safe_name("_".join([*group[:3], *([group[3]] if group[3] != "sgd" else [])]))
        ba_panels = [(ba_column(i), f"BA towards {i} (pp)", 100.0) for i in study.identities[group[0]]]
        builds = [(FIGURES[0], metric_vs_sparsity_figure, (study, group, ba_panels)),
                  (FIGURES[1], metric_vs_sparsity_figure, (study, group, UNCERTAINTY_PANELS)),
                  (FIGURES[2], countermeasure_figure, (study, group)),
                  (FIGURES[3], criteria_figure, (study, group))]
        for name, build, args in builds:
            try:
                paths.extend(save(build(*args), out_dir / f"{name}_{stem}"))
            except FigureNotApplicable as exc:
                log.info("figure %s_%s skipped: %s", name, stem, exc)
    return paths


__all__ = ["countermeasure_figure", "criteria_figure", "metric_vs_sparsity_figure", "write_bias_figures"]
