"""Sparsity bookkeeping shared by every module: which weights are prunable, how sparse they are, fixed masks.

Prunable = the weight of every Conv2d and Linear (biases and BN never; pruning_methods.md §0.1). Sparsity is
zeros / numel over those tensors. A method may prune only some of them (LTH-T keeps conv1 and fc dense): which ones
(its *prunable set*) and how its registered sparsity relates to the one measured over that set (its *sparsity
rule*) are data, in the shipped ``checkpoints/sparsity_rules.yaml`` (``prunable_set``, ``sparsity_rule``).
Masks are bool tensors keyed by parameter name (``layer1.0.conv1.weight``); True = kept. Fine-tuning keeps a fixed
mask by re-applying it after every optimizer step (pitfall P7).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .sparsity_rules import (  # noqa: F401  (the rules' names, for the callers that import them from here)
    LAYER_KINDS,
    RULES_FILE,
    SPARSITY_KINDS,
    PrunableSet,
    SparsityRule,
    Weight,
    iterative_sparsity,
    prunable_set,
    prunable_set_names,
    rounds_for_sparsity,
    sparsity_rule,
)

DEFAULT_HEAD_NAME = "fc"


def _is_head(name: str, head_name: str) -> bool:
    return name == head_name or name.startswith(head_name + ".")


def _model_weights(model: nn.Module) -> list[Weight]:
    """Every Conv2d/Linear ``.weight`` in module order; the head is what sits under ``model.head_name``."""
    head_name = getattr(model, "head_name", DEFAULT_HEAD_NAME)
    weights: list[Weight] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
        first = kind == "conv" and not any(w.kind == "conv" for w in weights)
        name = f"{module_name}.weight" if module_name else "weight"
        weights.append(Weight(name, kind, first, _is_head(module_name, head_name), module.weight))
    return weights


def _state_weights(state: Mapping[str, Any], head_name: str) -> list[Weight]:
    """The state-dict view of ``_model_weights``: ``*.weight`` tensors with ≥ 2 dims (BN weights are 1-d); 4-d ones
    are convolutions, and the first of them (state dicts keep module order) is the stem."""
    weights: list[Weight] = []
    for key, value in state.items():
        if not (isinstance(value, torch.Tensor) and (key == "weight" or key.endswith(".weight")) and value.dim() >= 2):
            continue
        kind = "conv" if value.dim() == 4 else "linear"
        first = kind == "conv" and not any(w.kind == "conv" for w in weights)
        weights.append(Weight(key, kind, first, _is_head(key, head_name), value))
    return weights


def _weights(model_or_state: nn.Module | Mapping[str, Any], head_name: str | None) -> list[Weight]:
    if isinstance(model_or_state, nn.Module):
        if head_name is not None and head_name != getattr(model_or_state, "head_name", DEFAULT_HEAD_NAME):
            raise ValueError("head_name can only be overridden for a state dict")
        return _model_weights(model_or_state)
    return _state_weights(model_or_state, head_name or DEFAULT_HEAD_NAME)


def prunable_weights(model: nn.Module, include_head: bool = True) -> dict[str, torch.Tensor]:
    """Every Conv2d/Linear ``.weight`` keyed by parameter name; the head is what sits under ``model.head_name``."""
    return {w.name: w.tensor for w in _model_weights(model) if include_head or not w.head}


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
