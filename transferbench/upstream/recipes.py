"""Upstream recipes: the shipped YAML (or a user's file), the method's knobs, the LR schedule, checkpoint names."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import shipped
from ..errors import TransferbenchError
from ..pruning.factory import METHODS
from ..vocabulary import format_sparsity, normalize_sparsity


def load_recipe(recipe: str | Path) -> dict[str, Any]:
    """A shipped recipe by name (``small_cpu``, ``imagenet_resnet50``) or a YAML file."""
    return shipped.load("recipe", recipe, flag="--recipe")[0]


def lr_at(schedule: dict, epoch: float, base_lr: float, total_epochs: int) -> float:
    """The recipe's LR at a (fractional) epoch: cosine with linear warm-up (§0.5), or WoodFisher's step decay
    (constant until ``constant_until``, then × ``gamma`` every ``every`` epochs; §2.3)."""
    if schedule.get("kind", "cosine") == "step":  # decays at the END of epochs until, until+every, ..., last
        points = range(schedule["constant_until"], schedule.get("last", 10**9) + 1, schedule["every"])
        return base_lr * schedule["gamma"] ** sum(epoch >= k + 1 for k in points)
    warm = schedule.get("warmup_epochs", 0)
    if epoch < warm:  # §0.5: base·(e+1)/W for the integer epoch e
        return base_lr * (math.floor(epoch) + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(total_epochs - warm, 1))) * base_lr


def checked_sparsities(method: str, sparsities: list[float]) -> list[float]:
    """The requested sparsities as fractions, checked against what ``method`` can produce."""
    sparsities = [0.0] if method == "dense" and sparsities in ([0.9], [0.0]) else sparsities
    try:
        sparsities = [normalize_sparsity(sp) for sp in sparsities]
    except (ValueError, TransferbenchError) as exc:
        raise TransferbenchError(f"bad --sparsity {sparsities}: {exc}") from None
    if method == "dense" and sparsities != [0.0]:
        raise TransferbenchError("--method dense trains a dense model: drop --sparsity (or pass 0)")
    if method not in METHODS:
        raise TransferbenchError(f"unknown pruning method '{method}' (--method); choose one of: {', '.join(METHODS)}")
    if method == "cram_nm" and sparsities != [0.5]:
        raise TransferbenchError("cram_nm produces 2:4 models: pass --sparsity 0.5")
    if method != "cram" and len(sparsities) != 1:
        raise TransferbenchError(f"--sparsity takes one value for {method} (only cram accepts several)")
    return sparsities


def method_recipe(method: str, recipe: str | Path, arch: str | None, dataset: str | None) -> tuple[dict, dict]:
    """(the recipe with the run's arch and dataset, the method's knobs); a method may bring its own schedule."""
    rec = load_recipe(recipe)
    if arch:
        rec["arch"] = arch
    if dataset:
        rec["dataset"] = dataset
    knobs = dict(rec["methods"].get(method, {}))
    rec["schedule"] = knobs.pop("schedule", rec["schedule"])  # WoodFisher's step schedule
    return rec, knobs


def checkpoint_name(rec: dict, method: str, sparsity: float, seed: int) -> str:
    return f"{rec['arch']}_{method}_{format_sparsity(sparsity).rstrip('%')}_{rec['name']}_s{seed}"
