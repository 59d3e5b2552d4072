"""Reports from a results store: collect the records, then leaderboards (Markdown/CSV/LaTeX) and figures.

    from transferbench.report import collect, leaderboard, write_leaderboards, write_figures, write_report

    runs = collect("results").runs
    print(leaderboard(runs, "resnet50", "linear").to_markdown())
    write_report(Path("results"))  # every table and figure, and results/report/index.html linking them
    bias_report(Path("results"))  # the CelebA bias study: results/bias/
"""

import typing as _typing

from ..lazy import lazy_package as _lazy_package

# each public name's submodule, imported on first use: the report commands' --help needs neither pandas nor
# matplotlib
_lazy_package(__name__, {
    ".bias": ("BiasStudy", "bias_study"),
    ".bias_report": ("BiasReport", "bias_report"),
    ".build": ("write_report",),
    ".collect": ("Collection", "collect", "parse_record"),
    ".compare": ("compare", "write_compare"),
    ".figstyle": ("FigureNotApplicable", "SavedFigure"),
    ".figures": ("accuracy_vs_sparsity_figure", "delta_heatmap_figure", "linear_vs_full_ranks_figure",
                 "plot_accuracy_vs_sparsity", "plot_delta_heatmap", "plot_linear_vs_full_ranks",
                 "plot_upstream_vs_transfer", "upstream_vs_transfer_figure", "write_figures"),
    ".index": ("write_index",),
    ".leaderboard": ("DELTA", "MEAN", "Leaderboard", "leaderboard"),
    ".leaderboard_files": ("write_leaderboards",),
    ".palette": ("METHOD_ORDER", "MethodStyle", "method_color", "method_colors", "method_style"),
    ".predictions": ("Beyond", "beyond", "write_beyond"),
    ".reference": ("read_reference", "read_references"),
})

if _typing.TYPE_CHECKING:
    from .bias import BiasStudy, bias_study
    from .bias_report import BiasReport, bias_report
    from .build import write_report
    from .collect import Collection, collect, parse_record
    from .compare import compare, write_compare
    from .figstyle import FigureNotApplicable, SavedFigure
    from .figures import (
        accuracy_vs_sparsity_figure,
        delta_heatmap_figure,
        linear_vs_full_ranks_figure,
        plot_accuracy_vs_sparsity,
        plot_delta_heatmap,
        plot_linear_vs_full_ranks,
        plot_upstream_vs_transfer,
        upstream_vs_transfer_figure,
        write_figures,
    )
    from .index import write_index
    from .leaderboard import DELTA, MEAN, Leaderboard, leaderboard
    from .leaderboard_files import write_leaderboards
    from .palette import METHOD_ORDER, MethodStyle, method_color, method_colors, method_style
    from .predictions import Beyond, beyond, write_beyond
    from .reference import read_reference, read_references

__all__ = [
    "DELTA",
    "MEAN",
    "METHOD_ORDER",
    "Beyond",
    "BiasReport",
    "BiasStudy",
    "Collection",
    "FigureNotApplicable",
    "Leaderboard",
    "MethodStyle",
    "SavedFigure",
    "accuracy_vs_sparsity_figure",
    "beyond",
    "bias_report",
    "bias_study",
    "collect",
    "compare",
    "delta_heatmap_figure",
    "leaderboard",
    "linear_vs_full_ranks_figure",
    "method_color",
    "method_colors",
    "method_style",
    "parse_record",
    "plot_accuracy_vs_sparsity",
    "plot_delta_heatmap",
    "plot_linear_vs_full_ranks",
    "plot_upstream_vs_transfer",
    "read_reference",
    "read_references",
    "upstream_vs_transfer_figure",
    "write_beyond",
    "write_compare",
    "write_figures",
    "write_index",
    "write_leaderboards",
    "write_report",
]
