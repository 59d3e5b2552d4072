"""One-shot magnitude pruning of a trained dense model (pruning_methods.md §6.3), and the compression operator C.

One CrAM model becomes one transfer candidate per sparsity: copy it, ``one_shot_prune`` the copy, then
``bn_recalibrate`` it (§6.5). The same mask computation is CrAM's C(θ̃) during training (§6.1), so both share
``compression_masks`` and ``scope_parameters``; the magnitude selection is magnitude.py's (masks.py's exact top-k,
§0.3), shared with GMP, LTH and AC/DC.

Scopes (§6.1, §6.3):
- ``global``: one magnitude threshold over every prunable weight (all convs, conv1 included, and the head);
- ``uniform``: every layer at the same sparsity, with the first layer (conv1) and the head left dense;
- ``nm``: N:M semi-structured, N kept out of every M consecutive input channels, on every conv and linear layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from . import masks as M
from .magnitude import magnitude_masks

Scope = Literal["global", "uniform", "nm"]
# A compression target: a sparsity in [0, 1] (global/uniform) or an (N, M) pair (nm).
Target = float | tuple[int, int]
SCOPES: tuple[str, ...] = ("global", "uniform", "nm")


def parse_nm(spec: str | tuple[int, int]) -> tuple[int, int]:
    """``"2:4"`` or ``(2, 4)`` → ``(2, 4)``; requires 0 < N <= M."""
    if isinstance(spec, str):
        parts = spec.split(":")
        if len(parts) != 2:
            raise ValueError(f"an N:M pattern looks like '2:4', got {spec!r}")
        try:
            n, m = int(parts[0]), int(parts[1])
        except ValueError:
            raise ValueError(f"an N:M pattern looks like '2:4', got {spec!r}") from None
    else:
        n, m = (int(v) for v in spec)
    if not 0 < n <= m:
        raise ValueError(f"N:M needs 0 < N <= M, got {n}:{m}")
    return n, m


def scope_parameters(model: nn.Module, scope: Scope) -> dict[str, nn.Parameter]:
    """The weights a scope compresses, keyed by parameter name, in module order.

    ``uniform`` skips the first prunable layer (the stem, conv1) and the head, as CrAM's ``one_shot_uniform_prune``
    and AC/DC's uniform configs do (§0.1); ``global`` and ``nm`` take every Conv/Linear weight (CrAM's
    ``ndim > 1`` rule).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    params = M.prunable_parameters(model)
    if scope != "uniform":
        return params
    first = next(iter(params), None)
    return M.prunable_parameters(model, include_head=False, exclude=(first,) if first else ())


def compression_masks(weights: Mapping[str, torch.Tensor], target: Target, scope: Scope) -> M.Masks:
    """Magnitude masks of ``weights`` for one compression target: C's masks (§6.1), True = kept.

    ``target`` is a sparsity for ``global`` (one threshold over all of ``weights``) and ``uniform`` (each tensor
    at that sparsity), an ``(N, M)`` pair for ``nm``. A tensor whose size is not a multiple of M raises.
    """
    if scope == "nm":
        if not isinstance(target, tuple):
            raise ValueError(f"scope 'nm' needs an (N, M) target, got {target!r}")
        n, m = target
        return {name: M.nm_mask(w, n, m) for name, w in weights.items()}
    if isinstance(target, tuple):
        raise ValueError(f"an (N, M) target needs scope 'nm', got scope {scope!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    # CrAM's "uniform" is the layer-wise magnitude selection GMP/AC/DC use (§0.4), over the stem- and head-free set
    return magnitude_masks(weights, target, "global" if scope == "global" else "layerwise")


@torch.no_grad()
def one_shot_prune(model: nn.Module, sparsity: float | str | tuple[int, int],
                   scope: Scope | None = None) -> M.Masks:
    """Magnitude-prune ``model`` in place, with no training (§6.3 step 2); returns the masks (True = kept).

    ``sparsity`` is a fraction in [0, 1] for ``scope="global"`` (the default) or ``"uniform"``, or an N:M pattern
    (``"2:4"`` or ``(2, 4)``) for ``scope="nm"`` (the default when a pattern is given). The masks cover only the
    pruned tensors: under ``uniform`` the stem and head are absent and stay dense, so ``masks.sparsity_of``
    measures the pruned layers only, as AC/DC's uniform models report (§0.1). Follow with ``bn_recalibrate``.
    """
    is_pattern = isinstance(sparsity, str | tuple)
    if scope is None:
        scope = "nm" if is_pattern else "global"
    if (scope == "nm") != is_pattern:
        raise ValueError(f"scope {scope!r} does not take the target {sparsity!r}: "
                         "an N:M pattern goes with scope 'nm', a sparsity fraction with 'global' or 'uniform'")
    target: Target = parse_nm(sparsity) if is_pattern else float(sparsity)
    params = scope_parameters(model, scope)
    masks = compression_masks(params, target, scope)
    M.apply(params, masks)
    return masks
