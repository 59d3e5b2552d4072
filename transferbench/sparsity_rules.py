"""Which weights a method prunes and what its registered sparsity means there: the shipped
``checkpoints/sparsity_rules.yaml`` read into prunable sets and sparsity rules.

Torch-free (the registry validates its rows with it when `checkpoints list` runs); the weights these rules select
are counted in :mod:`transferbench.sparsity`, which re-exports every name here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

from . import shipped
from .errors import TransferbenchError

if TYPE_CHECKING:
    import torch

RULES_FILE = "sparsity_rules"  # transferbench/shipped/checkpoints/sparsity_rules.yaml
LAYER_KINDS = ("conv", "linear")
SPARSITY_KINDS = ("nominal", "rounds", "learned")


class Weight(NamedTuple):
    """One Conv2d/Linear weight and what a prunable set asks of it (:mod:`transferbench.sparsity` lists them)."""

    name: str  # parameter / state-dict key
    kind: str  # "conv" or "linear"
    first_conv: bool  # the model's first Conv2d (the stem)
    head: bool
    tensor: torch.Tensor


@dataclass(frozen=True)
class PrunableSet:
    """Which Conv2d/Linear weights a method prunes; every other weight stays dense (pruning_methods.md §0.1)."""

    name: str
    layers: frozenset[str]  # "conv" (nn.Conv2d) and/or "linear" (nn.Linear)
    first_conv: bool  # whether the model's first Conv2d (the stem, conv1) is pruned
    head: bool  # whether the classifier head is pruned, whatever its layer type (STR's is a 1x1 conv)
    description: str = ""

    def selects(self, weight: Weight) -> bool:
        return (weight.kind in self.layers and (self.first_conv or not weight.first_conv)
                and (self.head or not weight.head))


@dataclass(frozen=True)
class SparsityRule:
    """How a method's registered sparsity relates to the one measured over its prunable set (the registry gate)."""

    prunable: str  # the PrunableSet's name
    kind: str = "nominal"  # nominal | rounds | learned (sparsity_rules.yaml)
    rate: float | None = None  # rounds: the fraction of the remaining weights each round prunes
    tolerance: float | None = None  # learned: the documented deviation from the registered sparsity

    def expected(self, registered: float) -> float:
        """What an authentic file measures over the prunable set when registered at ``registered``."""
        if self.kind == "rounds" and self.rate is not None:
            return iterative_sparsity(rounds_for_sparsity(registered, self.rate), self.rate)
        return registered

    def allowed_gap(self, max_gap: float) -> float:
        """The largest |measured − expected| that passes: the caller's ``max_gap``, or the method's deviation."""
        return max(max_gap, self.tolerance or 0.0)


def iterative_sparsity(rounds: int, rate: float) -> float:
    """Sparsity after ``rounds`` prunes of ``rate`` of the remaining weights: ``1 − (1 − rate)^rounds`` (§4.2)."""
    return 1.0 - (1.0 - rate) ** rounds


def rounds_for_sparsity(target: float, rate: float, at_least: bool = False) -> int:
    """Number of rounds whose sparsity ``1 − (1 − rate)^r`` is closest to ``target`` (ties: fewer rounds; at rate
    0.2, 80/90/95% → rounds 7/10/13 = 79.0/89.3/94.5%, §4.2); with ``at_least`` the fewest rounds reaching it."""
    if not 0.0 <= target < 1.0 or not 0.0 < rate < 1.0:
        raise ValueError(f"need 0 ≤ target < 1 and 0 < rate < 1, got target={target}, rate={rate}")
    exact = math.log(1.0 - target) / math.log(1.0 - rate)
    if at_least:
        return math.ceil(exact - 1e-9)  # 1e-9: a target that is exactly reachable must not round up a round
    lo, hi = math.floor(exact), math.ceil(exact)
    return min((lo, hi), key=lambda r: (abs(iterative_sparsity(r, rate) - target), r))


def _number(value: Any, what: str, origin: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise TransferbenchError(f"{origin}: {what} must be a fraction between 0 and 1, not {value!r}")
    return float(value)


def _parse_set(name: str, row: Any, origin: str) -> PrunableSet:
    if not isinstance(row, dict) or not set(row.get("layers") or ()) <= set(LAYER_KINDS) or not row.get("layers"):
        raise TransferbenchError(f"{origin}: set {name!r} needs layers (a list of {', '.join(LAYER_KINDS)}), "
                                 "first_conv and head")
    flags = {k: row.get(k) for k in ("first_conv", "head")}
    if not all(isinstance(v, bool) for v in flags.values()):
        raise TransferbenchError(f"{origin}: set {name!r} needs first_conv and head as true or false")
    return PrunableSet(name, frozenset(row["layers"]), flags["first_conv"], flags["head"],
                       " ".join(str(row.get("description") or "").split()))


def _parse_rule(what: str, row: Any, sets: Mapping[str, PrunableSet], origin: str) -> SparsityRule:
    if not isinstance(row, dict) or row.get("prunable") not in sets or row.get("sparsity", "nominal") \
            not in SPARSITY_KINDS:
        raise TransferbenchError(f"{origin}: {what} needs prunable (one of {', '.join(sets)}) and sparsity (one of "
                                 f"{', '.join(SPARSITY_KINDS)})")
    rule = SparsityRule(row["prunable"], row.get("sparsity", "nominal"), _number(row.get("rate"), "rate", origin),
                        _number(row.get("tolerance"), "tolerance", origin))
    if (rule.kind == "rounds") != (rule.rate is not None) or (rule.kind == "learned") != (rule.tolerance is not None):
        raise TransferbenchError(f"{origin}: {what}: a 'rounds' rule needs a rate and a 'learned' one a tolerance "
                                 "(and only they)")
    return rule


@cache
def _rules() -> tuple[dict[str, PrunableSet], SparsityRule, dict[str, SparsityRule]]:
    data, origin, _ = shipped.load_shipped("checkpoints", RULES_FILE)
    if not isinstance(data, dict) or not isinstance(data.get("sets"), dict) or not data["sets"]:
        raise TransferbenchError(f"{origin} must hold sets, default and methods; fix the file")
    sets = {name: _parse_set(name, row, origin) for name, row in data["sets"].items()}
    default = _parse_rule("default", data.get("default"), sets, origin)
    methods = data.get("methods") or {}
    if not isinstance(methods, dict):
        raise TransferbenchError(f"{origin}: methods must map a method to its rule; fix the file")
    return sets, default, {str(m): _parse_rule(f"method {m!r}", row, sets, origin) for m, row in methods.items()}


@cache
def _architecture_sets() -> dict[str, str]:
    """``architectures:``: arch name prefix -> the prunable set of methods that name none of their own."""
    data, origin, _ = shipped.load_shipped("checkpoints", RULES_FILE)
    table = data.get("architectures") or {}
    sets = _rules()[0]
    if not isinstance(table, dict) or any(v not in sets for v in table.values()):
        raise TransferbenchError(f"{origin}: architectures must map an arch name prefix to a set ({', '.join(sets)})")
    return {str(k): str(v) for k, v in table.items()}


def architecture_set(arch: str | None) -> str | None:
    """The prunable set the architecture family of ``arch`` prunes by default (vision transformers: the linear
    layers of their blocks), None for the rest (the methods' sets)."""
    if not arch:
        return None
    matches = [prefix for prefix in _architecture_sets() if arch.startswith(prefix)]
    return _architecture_sets()[max(matches, key=len)] if matches else None


def prunable_set_names() -> list[str]:
    """The prunable sets a checkpoint row may name (``prunable:``)."""
    return list(_rules()[0])


def prunable_set(name: str) -> PrunableSet:
    """The prunable set called ``name``; a TransferbenchError names the known ones."""
    sets = _rules()[0]
    if name not in sets:
        raise TransferbenchError(f"unknown prunable set {name!r}; known: {', '.join(sets)} "
                                 f"(transferbench/shipped/checkpoints/{RULES_FILE}.yaml)")
    return sets[name]


def sparsity_rule(method: str | None, prunable: str | None = None, arch: str | None = None) -> SparsityRule:
    """The sparsity rule of ``method`` (the default rule for methods the table does not list, or None), on the
    prunable set ``prunable`` when a checkpoint row names one, else the architecture family's (``arch``: a vision
    transformer's blocks, whatever the method), else the method's."""
    _, default, methods = _rules()
    rule = methods.get(method, default) if method is not None else default
    if prunable is None:  # a CNN method's set (LTH's convolutions, the pruners' "all but stem and head") would
        prunable = architecture_set(arch)  # miss or misname a transformer's weights: its family's set wins
    if prunable is None or prunable == rule.prunable:
        return rule
    prunable_set(prunable)  # an unknown name is an error, not a silent default
    return SparsityRule(prunable, rule.kind, rule.rate, rule.tolerance)
