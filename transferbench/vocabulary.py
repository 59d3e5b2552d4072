"""The project's small shared vocabulary, torch-free: architecture families, method names and how a sparsity is
written.

Everything that names an architecture family, resolves a method name or reads/prints a sparsity goes through here,
so the commands (`run`, `upstream`, `checkpoints list`, sweeps), the report (which must not import torch) and the
checkpoint registry agree by construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cache

from .errors import TransferbenchError

# Architecture variants that share a family with their base arch: STR's 1×1-conv head, RigL's TF port.
VARIANT_SUFFIXES = ("_str", "_rigl")
ALIASES_FILE = "method_aliases"  # transferbench/shipped/checkpoints/method_aliases.yaml


def arch_family(arch: str) -> str:
    """``resnet50_rigl``/``resnet50_str`` → ``resnet50``; ``mobilenet_str`` → ``mobilenet``."""
    for suffix in VARIANT_SUFFIXES:
        if arch.endswith(suffix):
            return arch[: -len(suffix)]
    return arch


# --- method names -------------------------------------------------------------------------------------------------


@cache
def method_aliases() -> dict[str, tuple[str, ...]]:
    """alias → the method names it stands for (method_aliases.yaml), keys in ``method_key`` form."""
    from . import shipped

    data, origin, _ = shipped.load_shipped("checkpoints", ALIASES_FILE)
    if not isinstance(data, dict) or not all(isinstance(v, list) and v for v in data.values()):
        raise TransferbenchError(f"{origin} must map each alias to a list of method names; fix the file")
    return {method_key(str(alias)): tuple(str(m) for m in names) for alias, names in data.items()}


def method_key(name: str) -> str:
    """How a typed method name is compared with the aliases: lower case, ``-`` read as ``_`` (``LTH-T`` → ``lth_t``)."""
    return name.strip().lower().replace("-", "_")


def method_matches(name: str, available: Iterable[str]) -> list[str]:
    """The names among ``available`` that the typed ``name`` stands for: itself (as typed, or in ``method_key``
    form) when available, else those its alias stands for (``rigl`` → ``rigl_erk1x``, ``rigl_erk5x``), in the
    alias table's order; [] when none."""
    available = list(dict.fromkeys(available))
    for candidate in (name, method_key(name)):
        if candidate in available:
            return [candidate]
    return [m for m in method_aliases().get(method_key(name), ()) if m in available]


def resolve_method(name: str, available: Iterable[str], *, flag: str = "--method", where: str = "") -> str:
    """The one method name among ``available`` (what is registered or trainable in the place it is used, e.g.
    the registry's rows for the chosen arch) that ``name`` stands for. Several: a one-line error listing the
    choices; none: a one-line error listing ``available``. ``where`` says which place, for messages (" for
    resnet50")."""
    available = sorted(set(available))
    matches = method_matches(name, available)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise TransferbenchError(f"{flag} {name} is ambiguous{where}: choose one of {', '.join(matches)}")
    raise TransferbenchError(f"unknown method '{name}' ({flag}){where}; known: {', '.join(available)}")


# --- sparsity -----------------------------------------------------------------------------------------------------


def normalize_sparsity(value: float | int | str, flag: str = "") -> float:
    """A sparsity as a fraction in [0, 1), from a fraction (0.9, "0.9") or an explicit percent ("90%"): the one
    reading for flags, sweep files, recipes, the registry and the Python API. A bare number above 1 (90) is refused
    with "write 0.9 or 90%" rather than guessed (files and the API read it as a percent until 0.1.x)."""
    named = f"{flag} {value}" if flag else f"sparsity {value!r}"
    text = value.strip() if isinstance(value, str) else value
    percent = isinstance(text, str) and text.endswith("%")
    try:
        number = float(text[:-1] if percent else text)
    except (TypeError, ValueError):
        raise TransferbenchError(f"{named}: write a fraction like 0.9 or a percent like 90%") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise TransferbenchError(f"{named}: write a fraction like 0.9 or a percent like 90%")
    if not percent and number > 1:
        raise TransferbenchError(f"{named} is ambiguous: write {_plain(number / 100)} or {_plain(number)}%")
    fraction = number / 100 if percent else number
    if not 0 <= fraction < 1:
        raise TransferbenchError(f"{named}: sparsity must be in [0, 1) as a fraction or [0%, 100%) as a percent")
    return round(fraction, 6)


def parse_sparsity(value: float | int | str | None, flag: str = "--sparsity") -> float | None:
    """A sparsity typed by a user: a fraction (0.9) or an explicit percent (``90%``); a bare number above 1 (95) is
    refused with "write 0.95 or 95%" rather than guessed. None stays None."""
    return None if value is None else normalize_sparsity(value, flag)


def _plain(number: float) -> str:
    return f"{round(number, 6):g}"


def format_sparsity(fraction: float) -> str:
    """How a sparsity is printed everywhere people read it (tables, logs, messages): a percent with up to two
    decimals (``90%``, ``97.5%``, ``89.26%``), precise enough that what is printed can be typed back as
    ``--sparsity`` and finds the same checkpoint (the registry matches within 0.05 points)."""
    return f"{round(fraction * 100, 2):g}%"
