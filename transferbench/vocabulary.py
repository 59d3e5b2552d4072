"""The project's small shared vocabulary, torch-free: architecture families and how a sparsity is written.

Everything that names an architecture family or reads/prints a sparsity goes through here, so the report
commands (which must not import torch) and the checkpoint registry agree by construction.
"""

from __future__ import annotations

from .errors import TransferbenchError

# Architecture variants that share a family with their base arch: STR's 1×1-conv head, RigL's TF port.
VARIANT_SUFFIXES = ("_str", "_rigl")


def arch_family(arch: str) -> str:
    """``resnet50_rigl``/``resnet50_str`` → ``resnet50``; ``mobilenet_str`` → ``mobilenet``."""
    for suffix in VARIANT_SUFFIXES:
        if arch.endswith(suffix):
            return arch[: -len(suffix)]
    return arch


def normalize_sparsity(value: float | int | str) -> float:
    """Accept a fraction (0.9) or a percentage (90) and return the fraction."""
    try:
        sparsity = float(value)
    except (TypeError, ValueError):
        raise TransferbenchError(f"sparsity must be a number like 0.9 or 90, not {value!r}") from None
    if sparsity > 1:
        sparsity /= 100
    if not 0 <= sparsity < 1:
        raise TransferbenchError(f"sparsity must be in [0, 1) or a percentage in [0, 100), not {value!r}")
    return round(sparsity, 6)


def format_sparsity(fraction: float) -> str:
    return f"{round(fraction * 100, 2):g}%"
