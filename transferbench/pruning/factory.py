"""Method name + recipe knobs → (pruner hooks, optimizer, epochs): the one place recipes meet the methods.

Step-based knobs in the recipes are fractions of the run's total steps S, so the same YAML keys describe the
CPU recipe and the ImageNet one; ``prune_epochs: [start, every, end]`` gives a gradual schedule in epochs instead
(IST-DASLab's configs). A recipe entry may name the pruner it runs (``pruner: rigl`` for ``rigl_erk1x``) and
override knobs at one sparsity (``by_sparsity``); both are resolved by ``build``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .acdc import ACDCPruner, acdc_imagenet_schedule, acdc_scaled_schedule
from .base import Pruner
from .cram import CrAM
from .gmp import GMPPruner, gmp_scaled_schedule
from .lth import LTH_PRUNABLE, LTH_RATE, LTHPruner, rounds_for_sparsity
from .magnitude import MagnitudePruner
from .rigl import RigLPruner
from .woodfisher import WoodFisherPruner

Built = tuple[Pruner, torch.optim.Optimizer, int]

# Keys of a recipe's method entry that set the whole run rather than the pruner (upstream/recipes.py moves them
# into the run's recipe; ``by_sparsity`` may set them too, so they must be resolved before the loader is built).
RUN_KEYS = ("epochs", "batch_size", "label_smoothing", "optimizer", "schedule", "scaling")


def _total_steps(ctx: dict, epochs: int) -> int:
    return epochs * len(ctx["loader"])


def _dense(model, opt, sparsity, knobs, ctx) -> Built:
    return Pruner(model), opt, ctx["recipe"]["epochs"]


def _magnitude(model, opt, sparsity, knobs, ctx) -> Built:
    epochs = ctx["recipe"]["epochs"]
    at = math.floor(knobs.get("at", 0.5) * _total_steps(ctx, epochs))
    return MagnitudePruner(model, sparsity, prune_step=at, scope=knobs.get("scope", "global"),
                           total_steps=_total_steps(ctx, epochs)), opt, epochs


def _gmp_knobs(knobs: dict, total: int, steps_per_epoch: int) -> dict:
    """``GMPPruner``'s t0 / t_end / prune_every in steps: from ``prune_epochs: [start, every, end]`` (IST's
    ``epochs: [1, 5, 40]``: the cubic ramp runs from epoch ``start`` to ``end``, updates on the first step of epochs
    start, start+every, … and of ``end``), else from fractions of the run (``t0``, ``t_end``, ``updates``)."""
    if "prune_epochs" in knobs:
        start, every, end = (int(e) for e in knobs["prune_epochs"])
        return {"t0": start * steps_per_epoch, "t_end": end * steps_per_epoch, "prune_every": every * steps_per_epoch}
    return gmp_scaled_schedule(total, knobs.get("t0", 0.2), knobs.get("t_end", 0.6), knobs.get("updates", 8))


def _gmp(model, opt, sparsity, knobs, ctx) -> Built:
    epochs = ctx["recipe"]["epochs"]
    total = _total_steps(ctx, epochs)
    return GMPPruner(model, sparsity, total, scope=knobs.get("scope", "global"),
                     initial_sparsity=knobs.get("initial_sparsity", 0.0),
                     **_gmp_knobs(knobs, total, len(ctx["loader"]))), opt, epochs


def _fisher_batches(ctx: dict, num_grads: int, batch_size: int) -> Callable[..., Iterator]:
    """N mini-batches of ``batch_size`` freshly drawn train samples per pruning step (``--full-subsample``), from
    the run's data source (``ctx["fisher_batches"]``: upstream.data.FisherBatches.source, whose draws are part of
    the run's resume state)."""
    return ctx["fisher_batches"](num_grads, batch_size)


def _woodfisher(model, opt, sparsity, knobs, ctx) -> Built:
    epochs = ctx["recipe"]["epochs"]
    total = _total_steps(ctx, epochs)
    pruner = WoodFisherPruner(
        model, sparsity, total, **_gmp_knobs(knobs, total, len(ctx["loader"])),
        fisher_batches=_fisher_batches(ctx, knobs.get("num_grads", 32), knobs.get("grad_batch_size", 16)),
        loss_fn=F.cross_entropy, num_grads=knobs.get("num_grads", 32), block_size=knobs.get("block_size", 256),
        damp=knobs.get("damp", 1e-4), initial_sparsity=knobs.get("initial_sparsity", 0.0),
        scale=knobs.get("scale", 1.0), fisher_dtype=_dtype(knobs, "fisher_dtype", torch.float64),
        **_woodfisher_memory_knobs(knobs),
    )
    return pruner, opt, epochs


def _dtype(knobs: dict, key: str, default: torch.dtype | None) -> torch.dtype | None:
    """A recipe's dtype name (``float32``, ``bfloat16``) as a torch dtype; ``default`` when unset or null."""
    name = knobs.get(key)
    if name is None:
        return default
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{key}: {name!r} is not a torch dtype (float64, float32, bfloat16, float16)")
    return dtype


def _woodfisher_memory_knobs(knobs: dict) -> dict[str, Any]:
    """Where WoodFisher keeps its N gradients (docs/paper_scale.md, "WoodFisher memory"): ``grad_dtype`` (default
    ``fisher_dtype``), ``offload_grads`` (default: on the host when the model is on CUDA), ``chunk_bytes`` of
    device work per chunk of blocks, and ``grad_microbatch`` (each gradient in pieces of that many samples)."""
    memory: dict[str, Any] = {"grad_dtype": _dtype(knobs, "grad_dtype", None),
                              "offload_grads": knobs.get("offload_grads"),
                              "grad_microbatch": knobs.get("grad_microbatch")}
    if knobs.get("chunk_bytes") is not None:
        memory["chunk_bytes"] = int(knobs["chunk_bytes"])
    return memory


def _rigl(model, opt, sparsity, knobs, ctx) -> Built:
    epochs = ctx["recipe"]["epochs"]
    total = _total_steps(ctx, epochs)
    return RigLPruner(model, sparsity, total, update_every=knobs.get("update_every", 100),
                      drop_fraction=knobs.get("drop_fraction", 0.3), t_end=math.floor(knobs.get("t_end", 0.75) * total),
                      distribution=knobs.get("distribution", "erk"), seed=ctx["seed"]), opt, epochs


def _lth(model, opt, sparsity, knobs, ctx) -> Built:
    """Iterative magnitude pruning with rewinding (§4); by default LTH-T as Chen et al. (§4.2).

    ``rewind: pretrained`` (default) is LTH-T: state 0 prunes θ_p itself, then every round rewinds to θ_p, trains
    ``epochs_per_round`` epochs with a fresh optimizer and prunes ``rate`` (20%) of the remaining weights of the
    ``prunable`` set (every Conv2d but conv1). The checkpoint is the ticket θ_p ⊙ m (as Chen et al. transfer it;
    §10 item 3 leaves open whether the paper's were retrained). θ_p is the published dense row named by
    ``pretrained`` (ImageNet: torchvision's ResNet-50), else the recipe's own dense model (the CPU recipe).
    ``rewind: <fraction>`` is Frankle et al.'s rewinding: IMP from scratch, rewinding to the weights at that
    fraction of the first round, and the final ticket is retrained for one more round.
    The number of rounds r is the one whose 1 − 0.8^r is nearest the requested sparsity (§4.2: 80/90/95% →
    7/10/13 rounds = 79.0/89.3/94.5% of the prunable set), so the sparsity lands on the 20% grid, not on the request.
    """
    rate = float(knobs.get("rate", LTH_RATE))
    rounds = rounds_for_sparsity(sparsity, rate)
    if rounds < 1:
        raise ValueError(f"LTH prunes {rate:.0%} per round: a sparsity of {sparsity:g} is less than half a round")
    per_round = knobs.get("epochs_per_round", 1)
    steps_per_round = per_round * len(ctx["loader"])
    rewind = knobs.get("rewind", "pretrained")
    if rewind == "pretrained":
        model.load_state_dict(_pretrained(model, knobs.get("pretrained"), ctx).state_dict())
        rewind_step, training_rounds = None, rounds - 1
    else:
        # the extra round trains the final ticket (steps past the pruner's last round keep the mask fixed)
        rewind_step, training_rounds = math.floor(float(rewind) * steps_per_round), rounds + 1
    pruner = LTHPruner(model, rounds=rounds, steps_per_round=steps_per_round, rate=rate, rewind_step=rewind_step,
                       prune_at_start=rewind == "pretrained", prunable=knobs.get("prunable", LTH_PRUNABLE))
    ctx["schedule_epochs"] = per_round  # IMP restarts the LR schedule every round (a constant LR for LTH-T)
    return pruner, opt, training_rounds * per_round


def _pretrained(model: nn.Module, row: str | None, ctx: dict) -> nn.Module:
    """LTH-T's θ_p: the published registry row ``row`` (its file found in the checkpoint directory or the torch
    hub cache and checked against the row's sha256, never downloaded), else the recipe's own dense model."""
    from ..checkpoints import load_checkpoint, load_registered
    from ..checkpoints.registry import published_checkpoint

    if row is None:
        return load_checkpoint(ctx["dense_model"]()).model
    spec, arch = published_checkpoint(row), getattr(model, "arch", type(model).__name__)
    if spec.arch != arch or spec.sparsity != 0.0:
        raise ValueError(f"pretrained: {row} is a {spec.arch} at sparsity {spec.sparsity:g}, but LTH-T rewinds "
                         f"a {arch} to dense pre-trained weights")
    return load_registered(spec).model


def _acdc(model, opt, sparsity, knobs, ctx) -> Built:
    epochs = ctx["recipe"]["epochs"]
    schedule = (acdc_imagenet_schedule(epochs) if knobs.get("phases") == "imagenet"
                else acdc_scaled_schedule(epochs))
    return ACDCPruner(model, sparsity, len(ctx["loader"]), schedule.prune_epochs, schedule.restore_epochs,
                      reset_momentum=knobs.get("reset_momentum", True), total_epochs=epochs), opt, epochs


def _cram(model, opt, sparsity, knobs, ctx, nm: bool = False) -> Built:
    wrapper = CrAM(model, opt, model, rho=knobs.get("rho", 0.1), sparsities=tuple(knobs.get("sparsities", (0.5,))),
                   plus=knobs.get("plus", True), sparse_grad=knobs.get("sparse_grad", True),
                   nm=[(2, 4), (4, 8)] if nm else None, generator=torch.Generator().manual_seed(ctx["seed"]))
    return Pruner(model), wrapper, ctx["recipe"]["epochs"]  # CrAM trains a dense model (no persistent mask)


METHODS: dict[str, Callable[..., Built]] = {
    "dense": _dense,
    "magnitude": _magnitude,
    "gmp": _gmp,
    "woodfisher": _woodfisher,
    "rigl": _rigl,
    "lth": _lth,
    "acdc": _acdc,
    "cram": _cram,
    "cram_nm": lambda *a: _cram(*a, nm=True),
}


def at_sparsity(entry: dict[str, Any], sparsity: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the entry with its ``by_sparsity`` overrides for ``sparsity`` applied, those overrides): e.g. WoodFisher's
    80% run (``by_sparsity: {0.8: {batch_size: 256, scale: 0.9}}``). Top-level keys replace the entry's."""
    entry = dict(entry)
    overrides = entry.pop("by_sparsity", None) or {}
    matching = [dict(v) for k, v in overrides.items() if math.isclose(float(k), sparsity, abs_tol=1e-9)]
    override = matching[0] if matching else {}
    return {**entry, **override}, override


def pruner_name(method: str, knobs: dict[str, Any]) -> str:
    """The pruning code a recipe entry runs: its ``pruner`` key, else the entry's own name."""
    return str(knobs.get("pruner", method))


def _set_optimizer_options(optimizer: torch.optim.Optimizer, options: dict[str, Any]) -> None:
    """Options of the run's SGD that the loop does not set itself: Nesterov momentum (RigL's MomentumOptimizer with
    use_nesterov=True, §3.3). SGD reads ``nesterov`` from its parameter groups at every step."""
    if not options.get("nesterov"):
        return
    for group in optimizer.param_groups:
        if "nesterov" not in group or group.get("momentum", 0) <= 0 or group.get("dampening", 0) != 0:
            raise ValueError("nesterov: true needs SGD with momentum > 0 and no dampening")
        group["nesterov"] = True


def build(method: str, model: nn.Module, optimizer: torch.optim.Optimizer, sparsity: float, knobs: dict[str, Any],
          ctx: dict[str, Any]) -> Built:
    """The hooks, optimizer and epoch count of recipe entry ``method`` (``knobs``) at ``sparsity``.

    ``ctx["recipe"]`` is the run's recipe (upstream/recipes.py ``method_recipe``). The entry's ``by_sparsity``
    overrides apply here when the caller has not resolved them; one that would change the run itself (a
    ``RUN_KEYS`` key, such as the batch the loader already uses) is refused rather than ignored.
    """
    recipe = ctx.get("recipe") or {}
    knobs, override = at_sparsity(knobs, sparsity)
    unapplied = sorted(k for k in override if k in RUN_KEYS and recipe.get(k) != override[k])
    if unapplied:
        raise ValueError(f"by_sparsity {sparsity:g} sets {', '.join(unapplied)} for the whole run, but the run was "
                         "set up without it: resolve the recipe with method_recipe(..., sparsity=...)")
    name = pruner_name(method, knobs)
    if name not in METHODS:
        raise ValueError(f"unknown pruner '{name}'; choose one of: {', '.join(METHODS)}")
    options = {**(recipe.get("optimizer") or {}), **(knobs.get("optimizer") or {})}
    _set_optimizer_options(optimizer, options)
    return METHODS[name](model, optimizer, sparsity, knobs, ctx)
