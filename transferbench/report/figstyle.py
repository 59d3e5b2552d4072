"""Figure plumbing: paper-column sizes and fonts, headless figures, and saving PNG + PDF atomically.

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state), so nothing needs closing and no
display is ever needed; they render with the Agg (PNG) and PDF backends.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure

from ..atomic import write_bytes

COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper
PAGE_WIDTH_IN = 7.0  # both columns
DPI = 200
FORMATS = ("png", "pdf")
RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 8,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.4,
    "lines.linewidth": 1.0,
    "lines.markersize": 4,
    "pdf.fonttype": 42,  # embed TrueType, so the text stays editable and searchable
    "ps.fonttype": 42,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


class FigureNotApplicable(ValueError):
    """The runs do not have what a figure needs (e.g. no dense row, no upstream top-1)."""


class SavedFigure(list[Path]):
    """The files a ``plot_*`` function wrote (a list of paths), with the Figure itself as ``.figure``."""

    def __init__(self, paths: list[Path], figure: Figure):
        super().__init__(paths)
        self.figure = figure


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    import seaborn as sns

    with sns.axes_style("whitegrid"), mpl.rc_context(RC):
        yield


def new_figure(width: float = COLUMN_WIDTH_IN, height: float = 2.6) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, out_path_stem: str | Path) -> SavedFigure:
    """Write ``<stem>.png`` (dpi 200) and ``<stem>.pdf``; the stem's own suffix, if any, is kept."""
    stem = Path(out_path_stem)
    paths = []
    with mpl.rc_context(RC):
        for fmt in FORMATS:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=DPI)
            paths.append(write_bytes(stem.parent / f"{stem.name}.{fmt}", buf.getvalue()))
    return SavedFigure(paths, fig)
