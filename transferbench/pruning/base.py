"""Pruners are hooks around an ordinary PyTorch training loop, so one code path runs every recipe:

    pruner = make_pruner("gmp", model, target_sparsity=0.9, total_steps=S, ...)
    for step, (x, y) in enumerate(batches):
        pruner.before_step(step, optimizer)        # schedules: update masks, reset momentum
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward()
        pruner.after_backward(step)                # mask gradients / collect statistics (RigL, WoodFisher)
        optimizer.step()
        pruner.after_step(step, optimizer)         # re-apply masks (momentum and weight decay revive zeros)
    pruner.finalize()                              # the final masks hold from here on

Methods that change the update itself (CrAM) are optimizer wrappers instead (``needs_closure = True``):
``optimizer.step(closure)`` with a closure that recomputes the loss and its gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import masks as M


class Pruner:
    """Base class: fixed masks (all ones unless a subclass sets them), applied to weights and gradients."""

    method: str = "dense"
    needs_closure = False

    def __init__(self, model: nn.Module, target_sparsity: float = 0.0, total_steps: int = 1,
                 include_head: bool = True, exclude: tuple[str, ...] = ()):
        self.model = model
        self.target_sparsity = float(target_sparsity)
        self.total_steps = int(total_steps)
        self.params = M.prunable_parameters(model, include_head=include_head, exclude=exclude)
        self.masks: M.Masks = M.dense_masks(self.params)

    # -- hooks ---------------------------------------------------------------------------------------
    def before_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Called before the forward pass of ``step`` (0-based, counted over the whole run)."""

    def after_backward(self, step: int) -> None:
        M.mask_grads(self.params, self.masks)

    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        M.apply(self.params, self.masks)

    def finalize(self) -> None:
        M.apply(self.params, self.masks)

    # -- helpers -------------------------------------------------------------------------------------
    def set_masks(self, masks: M.Masks) -> None:
        self.masks = {name: masks[name].to(self.params[name].device) for name in self.params}
        M.apply(self.params, self.masks)

    @property
    def sparsity(self) -> float:
        return M.sparsity_of(self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.cpu() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_masks(state["masks"])


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, pruner: Pruner, x: torch.Tensor,
                  y: torch.Tensor, step: int, loss_fn=F.cross_entropy) -> torch.Tensor:
    """One step of the protocol in the module docstring (an optimizer wrapper with ``needs_closure`` gets the
    closure); returns the loss."""
    pruner.before_step(step, optimizer)

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    if getattr(optimizer, "needs_closure", False):
        loss = optimizer.step(closure)
    else:
        loss = closure()
        pruner.after_backward(step)
        optimizer.step()
    pruner.after_step(step, optimizer)
    return loss


def reset_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Zero SGD momentum buffers (AC/DC at each decompression, §5.1)."""
    for state in optimizer.state.values():
        buf = state.get("momentum_buffer")
        if buf is not None:
            buf.zero_()
