"""The one mask utility every pruning method shares (pruning_methods.md §0).

Masks are ``dict[str, BoolTensor]`` keyed by parameter name (``layer1.0.conv1.weight``), True = kept.
Selections are exact: at sparsity s a tensor (or the global pool) of n weights keeps ``n - floor(s * n)``
of the highest scores; ties are broken deterministically by position (earlier index wins), so the same
inputs always give the same mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..sparsity import prunable_weights

Masks = dict[str, torch.Tensor]


def prunable_parameters(model: nn.Module, include_head: bool = True,
                        exclude: tuple[str, ...] = ()) -> dict[str, nn.Parameter]:
    """Conv/Linear weights eligible for pruning (IST convention: every conv + the fc; §0.1), minus ``exclude``."""
    return {name: p for name, p in prunable_weights(model, include_head=include_head).items()
            if not any(name == e or name.startswith(e + ".") for e in exclude)}


def n_keep(numel: int, sparsity: float) -> int:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return numel - math.floor(sparsity * numel + 1e-9)


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask of ``scores``' shape keeping exactly ``keep`` entries: the largest, ties by lower index."""
    flat = scores.detach().flatten().float()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        # stable descending sort: equal scores keep their index order, so ties resolve deterministically
        order = torch.sort(flat, descending=True, stable=True).indices
        mask[order[:keep]] = True
    return mask.view_as(scores)


def layerwise_masks(scores: Mapping[str, torch.Tensor], sparsity: float | Mapping[str, float]) -> Masks:
    """Each tensor keeps its own top (1 - s) fraction; ``sparsity`` may differ per layer (ERK, budgets)."""
    out = {}
    for name, score in scores.items():
        s = sparsity[name] if isinstance(sparsity, Mapping) else sparsity
        out[name] = topk_mask(score, n_keep(score.numel(), s))
    return out


def global_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> Masks:
    """One threshold over all tensors: exactly ``n - floor(s*n)`` weights kept in total (§0.4)."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().float() for n in names])
    keep = topk_mask(flat, n_keep(flat.numel(), sparsity))
    out, offset = {}, 0
    for name in names:
        size = scores[name].numel()
        out[name] = keep[offset:offset + size].view_as(scores[name])
        offset += size
    return out


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M semi-structured mask: in every group of ``m`` consecutive input channels (at fixed output channel and
    kernel position) keep the ``n`` largest |w| (CrAM's NMTopkCrAM layout, §6.1)."""
    w = weight.detach().abs()
    if w.dim() == 4:  # [O, I, kh, kw] → [O, kh, kw, I] so groups run along the input dimension
        w = w.permute(0, 2, 3, 1)
    if w.numel() % m:
        raise ValueError(f"a tensor of {w.numel()} weights cannot be split into groups of {m}")
    groups = w.reshape(-1, m)
    idx = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, idx, True).reshape(w.shape)
    return mask.permute(0, 3, 1, 2).contiguous() if weight.dim() == 4 else mask


def magnitude_scores(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: p.detach().abs() for name, p in params.items()}


@torch.no_grad()
def apply(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked-out weights in place."""
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


@torch.no_grad()
def mask_grads(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask.to(grad.dtype))


def sparsity_of(masks: Mapping[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(total, 1)


def dense_masks(params: Mapping[str, torch.Tensor]) -> Masks:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in params.items()}
