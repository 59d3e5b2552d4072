"""Is an upstream model at chance? A flag written beside its top-1 when it is registered (checkpoint metadata and
registry row), shown by `checkpoints list` and the demo. Torch-free.

A model is *at chance* when its top-1 on the upstream test set is no more than ``CHANCE_MARGIN_SE`` binomial standard
errors above the accuracy of guessing one of ``num_classes`` classes uniformly, ``1/K``:

    top1 <= 1/K + 2 * sqrt((1/K) * (1 - 1/K) / n)        (n: test images)

i.e. a test set of that size could not tell it from guessing. Example: 16 classes, 1000 test images → chance
6.25%, threshold 6.25% + 2 × 0.77% = 7.78%.
"""

from __future__ import annotations

import math

from ..vocabulary import format_sparsity

CHANCE_MARGIN_SE = 2.0  # binomial standard errors above 1/K that still count as chance
LTH_METHODS = ("lth", "lth_t")
LTH_NOTE = ("expected for an LTH-T ticket, which is the dense model's weights masked by iterative magnitude pruning "
            "without retraining: its transfer accuracy after fine-tuning is what counts "
            "(docs/protocol.md#lth-t-tickets)")


def chance_threshold(num_classes: int, test_size: int, margin_se: float = CHANCE_MARGIN_SE) -> float:
    """The highest top-1 (a fraction) that counts as chance for ``num_classes`` classes on ``test_size`` images."""
    if num_classes < 2 or test_size < 1:
        raise ValueError(f"chance needs at least 2 classes and 1 test image, got {num_classes} and {test_size}")
    p = 1.0 / num_classes
    return p + margin_se * math.sqrt(p * (1.0 - p) / test_size)


def at_chance(top1: float, num_classes: int, test_size: int, margin_se: float = CHANCE_MARGIN_SE) -> bool:
    """Whether ``top1`` (a fraction) is within ``margin_se`` standard errors of chance, or below it."""
    return top1 <= chance_threshold(num_classes, test_size, margin_se)


def chance_note(method: str, top1: float, num_classes: int, test_size: int) -> str:
    """One line for a model at chance: the numbers, and why an LTH-T ticket may be expected there."""
    line = (f"AT CHANCE upstream: top-1 {100 * top1:.2f}% vs chance {100 / num_classes:.2f}% "
            f"({num_classes} classes, {test_size} test images)")
    return f"{line}; {LTH_NOTE}" if method in LTH_METHODS else line


def chance_summary() -> list[str]:
    """Lines naming the registered models flagged at chance (none: no line), for the demo and sweeps to print."""
    from ..checkpoints.registry import list_checkpoints

    flagged = [s for s in list_checkpoints() if s.at_chance]
    if not flagged:
        return []
    names = ", ".join(f"{s.method} {format_sparsity(s.sparsity)} {s.arch} ({s.upstream_top1:.2f}%)" for s in flagged)
    lines = [f"upstream model(s) at chance accuracy: {names}; `transferbench checkpoints list` marks them"]
    if any(s.method in LTH_METHODS for s in flagged):
        lines.append(f"(LTH-T at chance: {LTH_NOTE})")
    return lines
