"""One fixed colour, marker and line style per pruning method, shared by every figure.

Colours come from seaborn's colour-blind-safe ``"colorblind"`` palette (10 colours); dense is black, a colour no
other method gets, so the baseline is never mistaken for a method. The 13 sparse methods that can occur come in
two sets that appear together:

* the checkpoint registry's (``transferbench/shipped/checkpoints/table.yaml``, the paper's methods): acdc,
  rigl_erk1x, rigl_erk5x, str, woodfisher, lth_t, gmp, cram, mfac;
* the methods ``transferbench upstream`` trains (``pruning/factory.py``, the demo's): magnitude, gmp, woodfisher,
  rigl, lth, acdc, cram, cram_nm.

Within each set every method has its own colour. Only three pairs share one, each a registry-only method and its
trained-only relative (rigl_erk1x/rigl, lth_t/lth, str/magnitude); the trained one of the pair is drawn dash-dotted
and every method has its own marker, so even a figure that shows both stays readable. (The paper's results are
drawn dotted, ``figures.PAPER_LINESTYLE``, so ``:`` is not used here.) Methods not listed get a slot from a stable
hash of their name, so they too look the same in every figure, never in dense's colour.

Methods not listed (one's own: ``mine``, ``ours``) never take a listed method's colour: they get colours of
``EXTRA_COLORS``, chosen apart from the "colorblind" palette, then darker hues beyond those. A report that shows
several such methods registers them first (:func:`use_methods`, which ``write_figures`` calls with every method of
the runs), so each gets its own colour, the same in every figure of that report; without it the slot comes from a
stable hash of the name.

Figures name methods by their display names (``shipped/checkpoints/display_names.yaml``: rigl_erk1x → "RigL ERK
1x"), which ``--label KEY=TEXT`` overrides (:func:`display_name`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

DENSE = "dense"
METHOD_ORDER: tuple[str, ...] = (
    "dense", "magnitude", "gmp", "woodfisher", "rigl", "rigl_erk1x", "rigl_erk5x",
    "lth", "lth_t", "acdc", "cram", "cram_nm", "str", "mfac",
)
PALETTE_NAME = "colorblind"
PALETTE_SIZE = 10
DENSE_COLOR: tuple[float, float, float] = (0.0, 0.0, 0.0)
LINESTYLE = "-"
RELATIVE_LINESTYLE = "-."  # the trained-only method of a pair that shares a colour
DENSE_LINESTYLE = "--"
# method → index into the "colorblind" palette; methods sharing an index never share their marker or line style
PALETTE_INDEX: dict[str, int] = {
    "gmp": 0, "woodfisher": 1, "acdc": 2, "cram": 3,
    "rigl_erk1x": 4, "rigl": 4,
    "lth_t": 5, "lth": 5,
    "mfac": 6,
    "str": 7, "magnitude": 7,
    "cram_nm": 8,
    "rigl_erk5x": 9,
}
RELATIVES = frozenset({"rigl", "lth", "magnitude"})
MARKERS: tuple[str, ...] = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "p", "h", "*", "d", "H")
# Colours for methods not in PALETTE_INDEX, each far from every "colorblind" colour and from dense's black:
# dark blue, crimson, dark teal, olive, magenta, indigo, rust, dark slate
EXTRA_COLORS: tuple[str, ...] = ("#1f2a7a", "#b2182b", "#00606b", "#6b6b00", "#c51b7d", "#5e3c99", "#8c3a00",
                                 "#3d5a40")
DISPLAY_NAMES_FILE = "display_names"  # transferbench/shipped/checkpoints/display_names.yaml
_own_methods: list[str] = []  # the methods not listed, in the order use_methods gave them their colours

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class MethodStyle:
    color: RGB
    marker: str
    linestyle: str


def method_index(method: str) -> int:
    """The method's slot: its position in METHOD_ORDER, or a stable slot after them for other methods."""
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method)
    return len(METHOD_ORDER) + zlib.crc32(method.encode()) % (PALETTE_SIZE * len(MARKERS))


def method_sort_key(method: str) -> tuple[int, int, str]:
    """Known methods in METHOD_ORDER, then the others alphabetically."""
    known = method in METHOD_ORDER
    return (0 if known else 1, METHOD_ORDER.index(method) if known else 0, method)


def order_methods(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods), key=method_sort_key)


@cache
def _palette() -> tuple[RGB, ...]:
    import seaborn as sns

    return tuple(tuple(float(c) for c in rgb) for rgb in sns.color_palette(PALETTE_NAME, PALETTE_SIZE))


def use_methods(methods: Iterable[str]) -> None:
    """Give each method of ``methods`` that has no listed colour its own colour for the figures that follow (in
    name order, so a report's colours do not depend on the order its runs were read)."""
    _own_methods[:] = sorted({m for m in methods if m != DENSE and m not in PALETTE_INDEX})


def _extra_color(slot: int) -> RGB:
    import matplotlib.colors as mcolors

    if slot < len(EXTRA_COLORS):
        return tuple(float(c) for c in mcolors.to_rgb(EXTRA_COLORS[slot]))  # type: ignore[return-value]
    import colorsys

    hue = (0.13 + 0.618034 * (slot - len(EXTRA_COLORS))) % 1.0  # golden-ratio steps keep neighbours apart
    return colorsys.hls_to_rgb(hue, 0.32, 0.75)


def method_color(method: str) -> RGB:
    if method == DENSE:
        return DENSE_COLOR
    if method in PALETTE_INDEX:
        return _palette()[PALETTE_INDEX[method]]
    if method in _own_methods:
        return _extra_color(_own_methods.index(method))
    return _extra_color(zlib.crc32(method.encode()) % len(EXTRA_COLORS))


def method_style(method: str) -> MethodStyle:
    i = method_index(method)
    if method == DENSE:
        linestyle = DENSE_LINESTYLE
    elif method in RELATIVES or (method not in METHOD_ORDER and (i // PALETTE_SIZE) % 2):
        linestyle = RELATIVE_LINESTYLE
    else:
        linestyle = LINESTYLE
    return MethodStyle(color=method_color(method), marker=MARKERS[i % len(MARKERS)], linestyle=linestyle)


def method_colors(methods: Iterable[str]) -> dict[str, RGB]:
    """``{method: colour}`` for ``methods`` (e.g. a seaborn ``palette=`` argument)."""
    return {m: method_color(m) for m in order_methods(methods)}


@cache
def display_names() -> dict[str, str]:
    """method → the name figures show (``display_names.yaml``)."""
    from ..errors import TransferbenchError
    from ..shipped import load_shipped

    data, origin, _ = load_shipped("checkpoints", DISPLAY_NAMES_FILE)
    if not isinstance(data, dict):
        raise TransferbenchError(f"{origin} must map each method name to the text figures show; fix the file")
    return {str(k): str(v) for k, v in data.items()}


def display_name(method: str, labels: Mapping[str, str] | None = None) -> str:
    """The name a figure shows for ``method``: ``labels`` (from ``--label``) first, then the shipped display names,
    else the method's own name."""
    if labels and method in labels:
        return labels[method]
    return display_names().get(method, method)


def parse_labels(items: Iterable[str] | None, flag: str = "--label") -> dict[str, str]:
    """``["mine=My method", ...]`` → ``{"mine": "My method"}``; a malformed item is a TransferbenchError."""
    from ..errors import TransferbenchError

    labels: dict[str, str] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise TransferbenchError(f"{flag} {item!r}: write KEY=TEXT, e.g. {flag} mine='Our method'")
        labels[key.strip()] = text.strip()
    return labels
