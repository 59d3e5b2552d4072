"""One-shot magnitude pruning (pruning_methods.md §1.1, "One-shot magnitude pruning") and the magnitude-mask
helper that GMP (§1), LTH (§4) and AC/DC (§5) share.

Global scope puts one threshold over the concatenated |W| of every prunable tensor (CrAM ``one_shot_prune``,
AC/DC ``UnstructuredMagnitudePruner``, LTH-T); layer-wise scope gives every tensor its own top-(1−s) (Zhu & Gupta,
CrAM ``one_shot_uniform_prune``; §0.4). Selections are the exact top-k of ``masks.py`` (§0.3): a tensor or pool of
n weights keeps ``n − floor(s·n)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from . import masks as M
from .base import Pruner

Scope = Literal["global", "layerwise"]
SCOPES: tuple[str, ...] = ("global", "layerwise")


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


@torch.no_grad()
def magnitude_masks(params: Mapping[str, torch.Tensor], sparsity: float, scope: Scope = "global",
                    within: Mapping[str, torch.Tensor] | None = None) -> M.Masks:
    """Masks keeping the largest |W| at ``sparsity`` (§0.4), without touching the weights.

    ``within`` (previous masks) restricts the choice to weights still kept, so successive calls give nested masks
    (§1.1: the IST statistic is ``(|W| + 1e-4) · M_prev``). Pruned entries score −1 rather than 0 so that a kept
    weight that happens to be exactly 0 still outranks them: nesting then holds for any weights, not just almost
    surely, as long as the sparsity does not decrease.
    """
    check_scope(scope)
    scores = M.magnitude_scores(params)
    if within is not None:
        scores = {name: torch.where(within[name].to(score.device), score, torch.full_like(score, -1.0))
                  for name, score in scores.items()}
    if scope == "global":
        return M.global_masks(scores, sparsity)
    return M.layerwise_masks(scores, sparsity)


def one_shot_magnitude(model: nn.Module, sparsity: float, scope: Scope = "global", include_head: bool = True,
                       exclude: tuple[str, ...] = ()) -> M.Masks:
    """Prune ``model`` in place by magnitude to ``sparsity`` and return the masks (§1.1 one-shot, §1.3).

    The prunable set is every Conv2d/Linear weight (§0.1), minus the head when ``include_head`` is False and minus
    the names or module prefixes in ``exclude`` (e.g. ``("conv1",)`` for CrAM's uniform variant). Pruning an
    already ``sparsity``-sparse model again changes nothing (§1.4: the zeros are the smallest scores).
    """
    params = M.prunable_parameters(model, include_head=include_head, exclude=exclude)
    masks = magnitude_masks(params, sparsity, scope)
    M.apply(params, masks)
    return masks


class MagnitudePruner(Pruner):
    """Dense training until ``prune_step``, one-shot magnitude pruning there, then fixed masks (§1.3 one-shot
    recipe: "train dense, one_shot_prune, optionally fine-tune with fixed masks").

    ``prune_step=0`` prunes the starting (e.g. pretrained) weights before the first update, i.e. one-shot pruning
    followed by sparse fine-tuning. If the loop ends before ``prune_step``, ``finalize`` prunes the final weights,
    so the model always leaves at the target sparsity.
    """

    method = "magnitude"

    def __init__(self, model: nn.Module, target_sparsity: float, prune_step: int = 0, scope: Scope = "global",
                 total_steps: int = 1, include_head: bool = True, exclude: tuple[str, ...] = ()):
        check_scope(scope)
        super().__init__(model, target_sparsity, total_steps, include_head=include_head, exclude=exclude)
        self.prune_step = int(prune_step)
        self.scope = scope
        self.pruned = False

    def prune(self) -> None:
        self.set_masks(magnitude_masks(self.params, self.target_sparsity, self.scope))
        self.pruned = True

    def before_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        if step == self.prune_step:
            self.prune()

    def finalize(self) -> None:
        if not self.pruned:
            self.prune()
        super().finalize()

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        # a resumed run past the prune step must not prune again in finalize
        self.pruned = state.get("pruned", self.sparsity > 0)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pruned": self.pruned}
