"""CrAM / CrAM+ — Compression-Aware Minimizer (Peste et al., ICLR 2023; pruning_methods.md §6).

CrAM trains a *dense* model whose compressed versions stay accurate, so one CrAM run yields a transfer candidate
per sparsity (one-shot prune + BN recalibration afterwards: ``oneshot.one_shot_prune``, ``bn.bn_recalibrate``).
Each step (§6.1):

    g  = ∇L(θ)                           clean pass; BN running stats update as usual
    θ̃  = θ + ρ g                         unnormalised ascent (not SAM's ρ g/‖g‖)
    ĝ  = ∇L(C(θ̃))                        second pass at the compressed point, BN running stats frozen
    ĝ ⊙= M                               sparse_grad only: M = C's mask, on the compressed weights
    θ ← base_step(θ, ĝ [+ g for CrAM+])  applied to the dense θ (straight-through through C)

C is global magnitude top-k at a sparsity k drawn each step from ``sparsities`` (CrAM-Multi), per-layer top-k
with the stem and head dense (``uniform``), or N:M with the pattern drawn from ``nm`` (2:4 / 4:8, §6.1).
CrAM keeps no persistent mask: the weights are dense after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from . import masks as M
from .bn import frozen_bn_stats
from .oneshot import Scope, Target, compression_masks, parse_nm, scope_parameters


def _unique_parameters(params_or_model: nn.Module | Iterable[Any]) -> list[nn.Parameter]:
    """Trainable parameters of a model, or of an iterable of parameters / param-group dicts, deduplicated."""
    if isinstance(params_or_model, nn.Module):
        items: Iterable[Any] = params_or_model.parameters()
    else:
        items = params_or_model
    flat: list[nn.Parameter] = []
    for item in items:
        flat.extend(item["params"] if isinstance(item, dict) else [item])
    seen: set[int] = set()
    out = []
    for p in flat:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class CrAM(torch.optim.Optimizer):
    """CrAM(+) wrapped around a base optimizer (§6.1); call ``step(closure)`` (``needs_closure = True``).

    ``closure()`` must zero the gradients, run forward + backward on the current batch and return the loss; it is
    called twice per step, the second time inside ``frozen_bn_stats``. The wrapper shares ``param_groups`` and
    ``state`` with ``base_optimizer``, so LR schedulers and ``zero_grad`` work on either object.

    Args:
        params_or_model: the parameters to perturb (a model, parameters, or param groups), normally the same
            ones ``base_optimizer`` updates.
        base_optimizer: the optimizer that applies the final gradient to the dense weights (SGD in §6.2).
        model: the network; its Conv/Linear weights (among ``params_or_model``) are what C compresses, and its
            BatchNorm layers are frozen during the second pass.
        rho: ascent radius ρ ≥ 0 (unnormalised; §6.2 uses 0.05 on ImageNet, 0.1–0.2 at CPU scale).
        sparsities: the k values for global/uniform C; one is drawn uniformly each step (CrAM-Multi).
        plus: CrAM+ — add the clean gradient g to ĝ (the default, as in every shipped config).
        sparse_grad: multiply ĝ by C's mask on the compressed weights (biases and BN get the full ĝ).
        nm: N:M patterns, e.g. ``[(2, 4), (4, 8)]`` (one drawn uniformly each step); replaces ``sparsities``.
        uniform: per-layer top-k with the first layer and the head left dense (CrAM's ``unif_prune``).
        generator: torch RNG for the draws (None: the global torch RNG; no draw is made for a single choice).
    """

    method = "cram"
    needs_closure = True

    def __init__(self, params_or_model: nn.Module | Iterable[Any], base_optimizer: torch.optim.Optimizer,
                 model: nn.Module, rho: float, sparsities: Sequence[float] = (0.5,), plus: bool = True,
                 sparse_grad: bool = False, nm: Sequence[tuple[int, int]] | None = None, uniform: bool = False,
                 generator: torch.Generator | None = None):
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if nm is not None and uniform:
            raise ValueError("N:M compression applies to every layer; it cannot be combined with uniform=True")
        self._params = _unique_parameters(params_or_model)
        # Optimizer.__init__ sets up the hook machinery; the groups are then swapped for the base optimizer's own,
        # so there is one set of hyperparameters (and one LR schedule) for both objects.
        super().__init__(self._params, {})
        self.base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        self.defaults = base_optimizer.defaults

        self.model = model
        self.rho = float(rho)
        self.plus = bool(plus)
        self.sparse_grad = bool(sparse_grad)
        self.generator = generator
        self.scope: Scope = "nm" if nm is not None else ("uniform" if uniform else "global")
        if nm is not None:
            self.choices: tuple[Target, ...] = tuple(parse_nm(pattern) for pattern in nm)
        else:
            self.choices = tuple(float(s) for s in sparsities)
            for s in self.choices:
                if not 0.0 <= s <= 1.0:
                    raise ValueError(f"sparsities must lie in [0, 1], got {s}")
        if not self.choices:
            raise ValueError("CrAM needs at least one compression target (sparsities or nm)")

        own = {id(p) for p in self._params}
        self.compressed = {name: p for name, p in scope_parameters(model, self.scope).items() if id(p) in own}
        if not self.compressed:
            raise ValueError("none of the model's Conv/Linear weights is among the parameters CrAM perturbs")
        # The last step's compression target and masks of C(θ̃), for logging and tests.
        self.last_target: Target | None = None
        self.last_masks: M.Masks = {}

    def draw_target(self) -> Target:
        """The compression target for this step: a uniform draw from ``choices`` (CrAM-Multi, §6.1)."""
        if len(self.choices) == 1:
            return self.choices[0]
        index = int(torch.randint(len(self.choices), (1,), generator=self.generator).item())
        return self.choices[index]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One CrAM(+) update (§6.1); returns the clean loss from the first ``closure()`` call."""
        if closure is None:
            raise RuntimeError("CrAM evaluates the loss twice per step: call optimizer.step(closure)")
        with torch.enable_grad():
            loss = closure()

        params = [p for p in self._params if p.grad is not None]
        clean = [p.grad.clone() for p in params] if self.plus else []
        dense = [p.clone() for p in params]
        for p in params:  # θ̃ = θ + ρ ∇L(θ); every parameter moves, BN affine and biases included
            p.add_(p.grad, alpha=self.rho)

        # C over the weights that received a gradient (CrAM's "ndim > 1 params with a grad")
        compressed = {name: p for name, p in self.compressed.items() if p.grad is not None}
        target = self.draw_target()
        masks = compression_masks(compressed, target, self.scope)
        M.apply(compressed, masks)
        self.last_target, self.last_masks = target, masks

        # Drop g before the second pass so a closure that forgets to zero the grads cannot accumulate onto it.
        for p in self._params:
            p.grad = None
        with frozen_bn_stats(self.model), torch.enable_grad():
            closure()
        if self.sparse_grad:
            M.mask_grads(compressed, masks)

        for p, theta in zip(params, dense, strict=True):  # back to the dense θ: ĝ is applied straight-through
            p.copy_(theta)
        if self.plus:  # CrAM+: ĝ + g
            for p, g in zip(params, clean, strict=True):
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        self.base_optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state, plus the draw RNG's state so a resumed run draws the same targets."""
        state = self.base_optimizer.state_dict()
        if self.generator is not None:
            state["cram_generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        generator_state = state.pop("cram_generator", None)
        self.base_optimizer.load_state_dict(state)
        # load_state_dict rebuilds the base optimizer's groups and state; keep sharing the new objects
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        if generator_state is not None and self.generator is not None:
            self.generator.set_state(generator_state)
