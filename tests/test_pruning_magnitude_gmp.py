"""One-shot magnitude pruning and GMP (pruning_methods.md §1), checked against torch.nn.utils.prune and §1.4.

The helpers at the top (a real SGD loop that drives a pruner's hooks, torch-prune reference masks) are shared with
test_pruning_lth_acdc.py.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from transferbench.models import create_model
from transferbench.pruning.base import Pruner
from transferbench.pruning.gmp import GMPPruner, cubic_sparsity, gmp_prune_steps, gmp_scaled_schedule
from transferbench.pruning.magnitude import MagnitudePruner, magnitude_masks, one_shot_magnitude
from transferbench.sparsity import prunable_weights

Hook = Callable[[str, int, torch.optim.Optimizer], None]


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet_tiny", num_classes=10)


def train(model: nn.Module, pruner: Pruner, steps: int, hook: Hook | None = None, lr: float = 0.05,
          finalize: bool = True) -> torch.optim.Optimizer:
    """The loop of base.py's docstring: SGD momentum 0.9 + weight decay, 16×16 inputs, fixed random batches.

    ``hook(stage, step, optimizer)`` runs at stage "pre" (before ``before_step``), "ready" (after it), "updated"
    (after ``optimizer.step``) and "post" (after ``after_step``).
    """
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 10, (8,), generator=generator))
               for _ in range(2)]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    hook = hook or (lambda stage, step, opt: None)
    model.train()
    for step in range(steps):
        x, y = batches[step % len(batches)]
        hook("pre", step, optimizer)
        pruner.before_step(step, optimizer)
        hook("ready", step, optimizer)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        pruner.after_backward(step)
        optimizer.step()
        hook("updated", step, optimizer)
        pruner.after_step(step, optimizer)
        hook("post", step, optimizer)
    if finalize:
        pruner.finalize()
    return optimizer


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


def torch_global_mask(model: nn.Module, names: list[str], n_pruned: int) -> dict[str, torch.Tensor]:
    """Reference: ``prune.global_unstructured(L1Unstructured)`` removing ``n_pruned`` weights, on a copy."""
    ref = copy.deepcopy(model)
    prune.global_unstructured([(_module(ref, n), "weight") for n in names], pruning_method=prune.L1Unstructured,
                              amount=n_pruned)
    return {n: _module(ref, n).weight_mask.bool() for n in names}


def torch_layer_masks(model: nn.Module, names: list[str], sparsity: float) -> dict[str, torch.Tensor]:
    """Reference: ``prune.l1_unstructured`` per tensor, removing floor(s·n) weights of each."""
    ref = copy.deepcopy(model)
    out = {}
    for n in names:
        module = _module(ref, n)
        prune.l1_unstructured(module, "weight", amount=math.floor(sparsity * module.weight.numel()))
        out[n] = module.weight_mask.bool()
    return out


def distinct_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random prunable weights whose magnitudes are all distinct (±k·1e-4 for a permutation k), so that no tie
    can make two correct top-k selections differ; float32 keeps every k·1e-4 < 2 distinct."""
    weights = prunable_weights(model)
    generator = torch.Generator().manual_seed(seed)
    total = sum(w.numel() for w in weights.values())
    values = (torch.randperm(total, generator=generator) + 1).float() * 1e-4
    values *= torch.where(torch.rand(total, generator=generator) < 0.5, -1.0, 1.0)
    offset = 0
    with torch.no_grad():
        for w in weights.values():
            w.copy_(values[offset:offset + w.numel()].view_as(w))
            offset += w.numel()
    return model


def assert_clean_cut(scores: list[torch.Tensor], n_pruned: int) -> None:
    """The reference comparison is only meaningful when no tie straddles the cut between pruned and kept."""
    if n_pruned == 0:
        return
    flat = torch.sort(torch.cat([s.detach().abs().flatten() for s in scores])).values
    assert flat[n_pruned - 1] < flat[n_pruned], "tie at the pruning threshold"


def zeros(masks: dict[str, torch.Tensor]) -> int:
    return sum(int((~m).sum()) for m in masks.values())


def assert_masked(pruner: Pruner) -> None:
    for name, mask in pruner.masks.items():
        assert (pruner.params[name][~mask] == 0).all(), name


def non_prunable(model: nn.Module, pruned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in pruned}


# --- one-shot magnitude ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.3, 0.9])
def test_one_shot_global_equals_torch_global_unstructured(sparsity):
    model = distinct_weights(tiny_model())
    names = list(prunable_weights(model))
    n_total = sum(w.numel() for w in prunable_weights(model).values())
    expected = torch_global_mask(model, names, math.floor(sparsity * n_total))
    untouched = non_prunable(model, expected)

    masks = one_shot_magnitude(model, sparsity, scope="global")

    assert set(masks) == set(names)
    for name in names:
        assert torch.equal(masks[name], expected[name]), name
    assert zeros(masks) == math.floor(sparsity * n_total)
    weights = prunable_weights(model)
    kept = torch.cat([weights[n][masks[n]].abs() for n in names])
    assert (torch.cat([weights[n][~masks[n]] for n in names]) == 0).all()
    # §1.4: one threshold — the smallest kept |w| beats every pruned |w| (measured on the unpruned copy)
    original = prunable_weights(distinct_weights(tiny_model()))
    pruned_abs = torch.cat([original[n][~masks[n]].abs() for n in names])
    assert kept.min() > pruned_abs.max()
    for key, value in model.state_dict().items():
        if key in untouched:
            assert torch.equal(value, untouched[key]), key


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_one_shot_layerwise_equals_torch_l1_unstructured(sparsity):
    model = distinct_weights(tiny_model(1), seed=1)
    names = list(prunable_weights(model))
    expected = torch_layer_masks(model, names, sparsity)

    masks = one_shot_magnitude(model, sparsity, scope="layerwise")

    for name in names:
        assert torch.equal(masks[name], expected[name]), name
        numel = masks[name].numel()
        assert int((~masks[name]).sum()) == math.floor(sparsity * numel), name
        assert int((prunable_weights(model)[name] == 0).sum()) == math.floor(sparsity * numel), name


def test_one_shot_respects_head_and_exclusions_and_is_idempotent():
    model = distinct_weights(tiny_model(2), seed=2)
    before = {k: v.clone() for k, v in prunable_weights(model).items()}
    masks = one_shot_magnitude(model, 0.7, include_head=False, exclude=("conv1",))
    assert "fc.weight" not in masks and "conv1.weight" not in masks and "layer1.0.conv1.weight" in masks
    weights = prunable_weights(model)
    assert torch.equal(weights["fc.weight"], before["fc.weight"])
    assert torch.equal(weights["conv1.weight"], before["conv1.weight"])
    n_pruned = math.floor(0.7 * sum(m.numel() for m in masks.values()))
    reference = torch_global_mask(distinct_weights(tiny_model(2), seed=2), list(masks), n_pruned)
    assert all(torch.equal(masks[n], reference[n]) for n in masks)

    pruned = {k: v.clone() for k, v in weights.items()}
    again = one_shot_magnitude(model, 0.7, include_head=False, exclude=("conv1",))
    assert all(torch.equal(again[n], masks[n]) for n in masks)
    assert all(torch.equal(prunable_weights(model)[n], pruned[n]) for n in pruned)


def test_magnitude_pruner_trains_dense_then_prunes_once_and_keeps_the_mask():
    model = tiny_model(3)
    pruner = MagnitudePruner(model, 0.75, prune_step=3)
    seen: dict[str, object] = {}

    def hook(stage, step, optimizer):
        if stage == "pre" and step == 3:
            assert pruner.sparsity == 0.0
            assert_clean_cut(list(pruner.params.values()), math.floor(0.75 * n_total))
            seen["reference"] = torch_global_mask(model, list(pruner.params), math.floor(0.75 * n_total))
        if stage == "ready" and step == 3:
            assert all(torch.equal(pruner.masks[n], m) for n, m in seen["reference"].items())
            seen["mask"] = {n: m.clone() for n, m in pruner.masks.items()}
        if stage == "post":
            if step < 3:
                assert all(bool((p != 0).all()) for p in pruner.params.values())
            else:
                assert all(torch.equal(pruner.masks[n], m) for n, m in seen["mask"].items())
                assert_masked(pruner)

    n_total = sum(p.numel() for p in pruner.params.values())
    train(model, pruner, 6, hook)
    assert zeros(pruner.masks) == math.floor(0.75 * n_total)
    assert all(torch.equal(pruner.masks[n], m) for n, m in seen["mask"].items())


def test_magnitude_pruner_prunes_in_finalize_when_the_loop_ends_first():
    model = tiny_model(4)
    pruner = MagnitudePruner(model, 0.5, prune_step=100, scope="layerwise")
    train(model, pruner, 2)
    for name, weight in pruner.params.items():
        assert int((weight == 0).sum()) == math.floor(0.5 * weight.numel()), name


# --- GMP ------------------------------------------------------------------------------------------------------


def test_cubic_schedule_values_by_hand():
    # s_i=0, s_f=0.9, t0=0, t_end=100: 0.9·(1 − (1 − p)³) at p = 1/4, 1/2, 3/4, 1 (§1.4)
    assert cubic_sparsity(25, 0.0, 0.9, 0, 100) == pytest.approx(0.9 * (1 - 0.75**3))  # 0.5203125
    assert cubic_sparsity(50, 0.0, 0.9, 0, 100) == pytest.approx(0.7875)
    assert cubic_sparsity(75, 0.0, 0.9, 0, 100) == pytest.approx(0.8859375)
    assert cubic_sparsity(100, 0.0, 0.9, 0, 100) == 0.9
    assert cubic_sparsity(10, 0.05, 0.9, 10, 50) == 0.05  # s(t0) = s_i exactly
    assert cubic_sparsity(3, 0.05, 0.9, 10, 50) == 0.05
    assert cubic_sparsity(80, 0.05, 0.9, 10, 50) == 0.9
    values = [cubic_sparsity(t, 0.0, 0.8, 5, 60) for t in range(70)]
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_cubic_schedule_reproduces_the_ist_gmp_table():
    # §1.2 (b): pruning at epochs range(1, 40, 5) of a [1, 5, 40] schedule with s_i = 0.05 stops short of s_f
    table = {
        0.80: [0.05, 0.3031, 0.4916, 0.6252, 0.7133, 0.7653, 0.7908, 0.7992],
        0.90: [0.05, 0.3368, 0.5505, 0.7019, 0.8017, 0.8607, 0.8896, 0.8991],
        0.98: [0.05, 0.3638, 0.5976, 0.7633, 0.8725, 0.9370, 0.9686, 0.9790],
    }
    for s_f, expected in table.items():
        got = [cubic_sparsity(e, 0.05, s_f, 1, 40) for e in range(1, 40, 5)]
        assert got == pytest.approx(expected, abs=5e-5)


def test_prune_steps_end_on_t_end_and_the_scaled_schedule():
    assert gmp_prune_steps(0, 10, 3) == [0, 3, 6, 9, 10]
    assert gmp_prune_steps(2, 8, 2) == [2, 4, 6, 8]
    assert gmp_scaled_schedule(100) == {"t0": 20, "t_end": 60, "prune_every": 5}  # §9: 0.2S, 0.6S, n = 8
    with pytest.raises(ValueError):
        gmp_prune_steps(5, 3, 1)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_gmp_masks_are_nested_follow_the_schedule_and_end_exactly_at_s_f(scope):
    model = tiny_model(5)
    s_f, steps = 0.9, 12
    pruner = GMPPruner(model, s_f, total_steps=steps, t0=2, t_end=8, prune_every=3, scope=scope)
    assert pruner.prune_steps == [2, 5, 8]
    names = list(pruner.params)
    n_total = sum(p.numel() for p in pruner.params.values())
    state: dict[str, object] = {"previous": {n: m.clone() for n, m in pruner.masks.items()}, "updates": 0}

    def hook(stage, step, optimizer):
        if stage == "pre":
            state["frozen"] = non_prunable(model, pruner.params)
            if step in pruner.prune_steps:
                s_t = cubic_sparsity(step, 0.0, s_f, 2, 8)
                if scope == "global":
                    assert_clean_cut(list(pruner.params.values()), math.floor(s_t * n_total))
                else:
                    for p in pruner.params.values():
                        assert_clean_cut([p], math.floor(s_t * p.numel()))
                # weights are masked here, so torch's reference removes the old zeros first: nested by construction
                state["reference"] = (torch_global_mask(model, names, math.floor(s_t * n_total)) if scope == "global"
                                      else torch_layer_masks(model, names, s_t))
        if stage == "ready" and step in pruner.prune_steps:
            state["updates"] += 1
            s_t = cubic_sparsity(step, 0.0, s_f, 2, 8)
            for n in names:
                assert torch.equal(pruner.masks[n], state["reference"][n]), (step, n)
                assert not (pruner.masks[n] & ~state["previous"][n]).any(), "masks must be nested"
                if scope == "layerwise":
                    assert int((~pruner.masks[n]).sum()) == math.floor(s_t * pruner.masks[n].numel())
            if scope == "global":
                assert zeros(pruner.masks) == math.floor(s_t * n_total)
        if stage == "ready":
            state["previous"] = {n: m.clone() for n, m in pruner.masks.items()}
        if stage == "post":
            assert_masked(pruner)
            for key, value in model.state_dict().items():
                if key in state["frozen"] and not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                    # after_step touches nothing but the masked weights: the optimizer's update stays as it was
                    assert torch.equal(value, state["updated"][key]), key
        if stage == "updated":
            state["updated"] = non_prunable(model, pruner.params)

    train(model, pruner, steps, hook)
    assert state["updates"] == 3
    if scope == "global":
        assert zeros(pruner.masks) == math.floor(s_f * n_total)
    else:
        assert all(int((~m).sum()) == math.floor(s_f * m.numel()) for m in pruner.masks.values())
    assert pruner.reached_target()
    assert_masked(pruner)


def test_gmp_cut_short_warns():
    model = tiny_model(6)
    pruner = GMPPruner(model, 0.8, total_steps=10, t0=0, t_end=8, prune_every=4)
    with pytest.warns(UserWarning, match="before t_end"):
        train(model, pruner, 3)


def test_magnitude_masks_within_keeps_pruned_weights_out_even_when_kept_weights_are_zero():
    weights = {"a": torch.tensor([0.0, 0.0, 3.0, 4.0]), "b": torch.tensor([0.5, 2.0])}
    within = {"a": torch.tensor([False, True, True, True]), "b": torch.tensor([True, True])}
    masks = magnitude_masks(weights, 0.5, within=within)
    # a[0] is pruned already; the exactly-zero but kept a[1] goes next, never a[0] coming back
    assert masks["a"].tolist() == [False, False, True, True] and masks["b"].tolist() == [False, True]


def test_gmp_from_epochs_converts_an_epoch_recipe_to_steps():
    # IST's [1, 5, 40] with s_i = 0.05 (§1.2 b), 10 steps per epoch: updates at epochs 1, 6, …, 36 and 40
    pruner = GMPPruner.from_epochs(tiny_model(), 0.9, steps_per_epoch=10, total_epochs=100, start_epoch=1,
                                   end_epoch=40, prune_every_epochs=5, initial_sparsity=0.05)
    assert pruner.prune_steps == [10 * e for e in (*range(1, 40, 5), 40)]
    assert pruner.sparsity_at(360) == pytest.approx(0.8991, abs=5e-5) and pruner.sparsity_at(400) == 0.9
