"""One fixed colour, marker and line style per pruning method, shared by every figure.

Colours come from seaborn's colour-blind-safe ``"colorblind"`` palette and are assigned by the fixed order of
``METHOD_ORDER``, so a method keeps its colour whatever subset of methods a figure shows. The palette has 10
colours; methods past the tenth reuse a colour with a different marker and line style. Methods not in the list
get a slot from a stable hash of their name, so they too look the same in every figure.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

METHOD_ORDER: tuple[str, ...] = (
    "dense", "magnitude", "gmp", "woodfisher", "rigl", "rigl_erk1x", "rigl_erk5x",
    "lth", "lth_t", "acdc", "cram", "cram_nm", "str", "mfac",
)
PALETTE_NAME = "colorblind"
PALETTE_SIZE = 10
MARKERS: tuple[str, ...] = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "p", "h", "*", "d", "H")
LINESTYLES: tuple[str, ...] = ("-", "-.", ":")  # one per pass through the palette; "--" is kept for dense
DENSE_LINESTYLE = "--"

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
    return len(METHOD_ORDER) + zlib.crc32(method.encode()) % (PALETTE_SIZE * len(LINESTYLES))


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


def method_color(method: str) -> RGB:
    return _palette()[method_index(method) % PALETTE_SIZE]


def method_style(method: str) -> MethodStyle:
    i = method_index(method)
    return MethodStyle(
        color=_palette()[i % PALETTE_SIZE],
        marker=MARKERS[i % len(MARKERS)],
        linestyle=DENSE_LINESTYLE if method == "dense" else LINESTYLES[(i // PALETTE_SIZE) % len(LINESTYLES)],
    )


def method_colors(methods: Iterable[str]) -> dict[str, RGB]:
    """``{method: colour}`` for ``methods`` (e.g. a seaborn ``palette=`` argument)."""
    return {m: method_color(m) for m in order_methods(methods)}
