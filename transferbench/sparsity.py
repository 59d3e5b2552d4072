"""Sparsity bookkeeping shared by every module: which weights are prunable, how sparse they are, fixed masks.

Prunable = the weight of every Conv2d and Linear (biases and BN never; pruning_methods.md §0.1). Sparsity is
zeros / numel over those tensors. A method may prune only some of them (LTH-T keeps conv1 and fc dense): which ones
(its *prunable set*) and how its registered sparsity relates to the one measured over that set (its *sparsity
rule*) are data, in the shipped ``checkpoints/sparsity_rules.yaml`` (``prunable_set``, ``sparsity_rule``).
Masks are bool tensors keyed by parameter name (``layer1.0.conv1.weight``); True = kept. Fine-tuning keeps a fixed
mask by re-applying it after every optimizer step (pitfall P7).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any, NamedTuple

import torch
from torch import nn

from . import shipped
from .errors import TransferbenchError

DEFAULT_HEAD_NAME = "fc"
RULES_FILE = "sparsity_rules"  # transferbench/shipped/checkpoints/sparsity_rules.yaml
LAYER_KINDS = ("conv", "linear")
SPARSITY_KINDS = ("nominal", "rounds", "learned")


def _is_head(name: str, head_name: str) -> bool:
    return name == head_name or name.startswith(head_name + ".")


class _Weight(NamedTuple):
    """One Conv2d/Linear weight and what a prunable set asks of it."""

    name: str  # parameter / state-dict key
    kind: str  # "conv" or "linear"
    first_conv: bool  # the model's first Conv2d (the stem)
    head: bool
    tensor: torch.Tensor


def _model_weights(model: nn.Module) -> list[_Weight]:
    """Every Conv2d/Linear ``.weight`` in module order; the head is what sits under ``model.head_name``."""
    head_name = getattr(model, "head_name", DEFAULT_HEAD_NAME)
    weights: list[_Weight] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
        first = kind == "conv" and not any(w.kind == "conv" for w in weights)
        name = f"{module_name}.weight" if module_name else "weight"
        weights.append(_Weight(name, kind, first, _is_head(module_name, head_name), module.weight))
    return weights


def _state_weights(state: Mapping[str, Any], head_name: str) -> list[_Weight]:
    """The state-dict view of ``_model_weights``: ``*.weight`` tensors with ≥ 2 dims (BN weights are 1-d); 4-d ones
    are convolutions, and the first of them (state dicts keep module order) is the stem."""
    weights: list[_Weight] = []
    for key, value in state.items():
        if not (isinstance(value, torch.Tensor) and (key == "weight" or key.endswith(".weight")) and value.dim() >= 2):
            continue
        kind = "conv" if value.dim() == 4 else "linear"
        first = kind == "conv" and not any(w.kind == "conv" for w in weights)
        weights.append(_Weight(key, kind, first, _is_head(key, head_name), value))
    return weights


def _weights(model_or_state: nn.Module | Mapping[str, Any], head_name: str | None) -> list[_Weight]:
    if isinstance(model_or_state, nn.Module):
        if head_name is not None and head_name != getattr(model_or_state, "head_name", DEFAULT_HEAD_NAME):
            raise ValueError("head_name can only be overridden for a state dict")
        return _model_weights(model_or_state)
    return _state_weights(model_or_state, head_name or DEFAULT_HEAD_NAME)


def prunable_weights(model: nn.Module, include_head: bool = True) -> dict[str, torch.Tensor]:
    """Every Conv2d/Linear ``.weight`` keyed by parameter name; the head is what sits under ``model.head_name``."""
    return {w.name: w.tensor for w in _model_weights(model) if include_head or not w.head}


# --- which weights a method prunes, and what its registered sparsity means (sparsity_rules.yaml) -------------


@dataclass(frozen=True)
class PrunableSet:
    """Which Conv2d/Linear weights a method prunes; every other weight stays dense (pruning_methods.md §0.1)."""

    name: str
    layers: frozenset[str]  # "conv" (nn.Conv2d) and/or "linear" (nn.Linear)
    first_conv: bool  # whether the model's first Conv2d (the stem, conv1) is pruned
    head: bool  # whether the classifier head is pruned, whatever its layer type (STR's is a 1x1 conv)
    description: str = ""

    def selects(self, weight: _Weight) -> bool:
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


def sparsity_rule(method: str | None, prunable: str | None = None) -> SparsityRule:
    """The sparsity rule of ``method`` (the default rule for methods the table does not list, or None), on the
    prunable set ``prunable`` when a checkpoint row names one."""
    _, default, methods = _rules()
    rule = methods.get(method, default) if method is not None else default
    if prunable is None or prunable == rule.prunable:
        return rule
    prunable_set(prunable)  # an unknown name is an error, not a silent default
    return SparsityRule(prunable, rule.kind, rule.rate, rule.tolerance)


def set_weights(model_or_state: nn.Module | Mapping[str, Any], prunable: str,
                head_name: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of the prunable set ``prunable`` in a model (its parameters) or a state dict, keyed by name."""
    selected = prunable_set(prunable)
    return {w.name: w.tensor for w in _weights(model_or_state, head_name) if selected.selects(w)}


@dataclass
class SparsityReport:
    """Per-layer and overall zero counts over a set of prunable weights."""

    per_layer: dict[str, dict] = field(default_factory=dict)  # name → {numel, zeros, sparsity}
    total: int = 0
    zeros: int = 0
    overall: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_counts(cls, counts: Mapping[str, tuple[int, int]]) -> SparsityReport:
        """Build a report from ``name → (numel, zeros)``."""
        report = cls()
        for name, (numel, zeros) in counts.items():
            report.per_layer[name] = {"numel": numel, "zeros": zeros, "sparsity": zeros / numel if numel else 0.0}
            report.total += numel
            report.zeros += zeros
        report.overall = report.zeros / report.total if report.total else 0.0
        return report

    def select(self, names: Iterable[str]) -> SparsityReport:
        """The report restricted to ``names`` (e.g. the backbone out of a report that includes the head)."""
        return SparsityReport.from_counts(
            {name: (self.per_layer[name]["numel"], self.per_layer[name]["zeros"]) for name in names}
        )


def _report(weights: Mapping[str, torch.Tensor]) -> SparsityReport:
    counts = {}
    for name, weight in weights.items():
        numel = weight.numel()
        counts[name] = (numel, numel - int(torch.count_nonzero(weight.detach())))
    return SparsityReport.from_counts(counts)


def measure_sparsity(
    model_or_state: nn.Module | Mapping[str, Any],
    include_head: bool = True,
    head_name: str | None = None,
    prunable: str | None = None,
) -> SparsityReport:
    """Sparsity of the prunable weights of a model, or of a state dict (``*.weight`` tensors with ≥ 2 dims).

    ``head_name`` defaults to the model's own (``fc`` for a state dict). With ``prunable`` (a set's name) the
    report covers that set instead of every Conv/Linear weight (``include_head`` is then ignored).
    """
    if prunable is not None:
        return _report(set_weights(model_or_state, prunable, head_name))
    return _report({w.name: w.tensor for w in _weights(model_or_state, head_name) if include_head or not w.head})


@torch.no_grad()
def masks_from_zeros(model: nn.Module, include_head: bool = False) -> dict[str, torch.Tensor]:
    """Fixed masks read off the current zeros: True where a prunable weight is non-zero (head excluded)."""
    return {name: weight != 0 for name, weight in prunable_weights(model, include_head).items()}


def _masked_parameters(
    model: nn.Module, masks: Mapping[str, torch.Tensor]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"mask for {name!r} matches no parameter of {type(model).__name__}")
        param = params[name]
        if mask.shape != param.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight {tuple(param.shape)}")
        yield param, mask


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every masked-out weight in place (call after each optimizer step to keep the mask fixed)."""
    for param, mask in _masked_parameters(model, masks):
        # A bool mask multiplies in place without a float copy; only a mask on another device is moved
        # (keep masks on the model's device when calling this every step).
        param.mul_(mask if mask.device == param.device else mask.to(param.device))


class FixedMasks:
    """Masks bound to a model's parameters, re-applied in one fused call after every optimizer step.

    ``apply_masks`` looks parameters up by name and converts each mask on every call; on the training hot
    path that costs several percent of a ResNet50 step on CPU (benchmarks/bench_core.py), this does not.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        pairs = list(_masked_parameters(model, masks))
        self.params = [param for param, _ in pairs]
        # empty_like keeps the parameter's memory format (channels_last in full fine-tuning): the fused multiply
        # then walks both tensors in the same order.
        self.masks = [torch.empty_like(param).copy_(mask) for param, mask in pairs]

    @torch.no_grad()
    def apply(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)


@torch.no_grad()
def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """Number of weights that the masks prune but that are non-zero (0 when the masks hold)."""
    violations = 0
    for param, mask in _masked_parameters(model, masks):
        pruned = ~mask.to(device=param.device, dtype=torch.bool)
        violations += int((param[pruned] != 0).sum())
    return violations
