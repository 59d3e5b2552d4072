"""RigL (pruning_methods.md §3): ERK densities (closed form, the spec's ResNet-50 table), the cosine drop fraction,
one drop/grow update against an independent selection, and the invariants over a real SGD loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transferbench.models import create_model
from transferbench.pruning import masks as M
from transferbench.pruning.base import training_step
from transferbench.pruning.rigl import RigLPruner, cosine_drop_fraction, erk_densities


def _budget(shapes, s):
    return sum(math.prod(v) - math.floor(s * math.prod(v)) for v in shapes.values())


# -- ERK --------------------------------------------------------------------------------------------------------
def test_erk_equals_the_closed_form_when_no_layer_is_capped():
    shapes = {"a": (16, 8, 3, 3), "b": (32, 16, 3, 3), "c": (100, 64)}
    s = 0.8
    raw = {"a": (16 + 8 + 3 + 3) / 1152, "b": (32 + 16 + 3 + 3) / 4608, "c": 164 / 6400}
    eps = _budget(shapes, s) / (raw["a"] * 1152 + raw["b"] * 4608 + raw["c"] * 6400)
    got = erk_densities(shapes, s)
    assert got == pytest.approx({k: eps * r for k, r in raw.items()}, rel=1e-12)
    assert max(got.values()) < 1
    assert sum(got[k] * math.prod(v) for k, v in shapes.items()) == pytest.approx(_budget(shapes, s), rel=1e-12)
    # erk_power_scale raises the raw ratio to a power
    half = erk_densities(shapes, s, erk_power_scale=0.5)
    assert half["a"] / half["b"] == pytest.approx(math.sqrt(raw["a"] / raw["b"]))


def test_erk_caps_a_layer_at_dense_and_moves_its_zeros_to_the_others():
    shapes = {"stem": (4, 3, 1, 1), "body": (64, 64, 3, 3), "fc": (100, 256)}
    s = 0.9
    got = erk_densities(shapes, s)
    assert got["stem"] == 1.0  # raw 9/12 would need a density far above 1
    # the stem's floor(0.9·12) = 10 zeros are taken from the budget of the two ERK layers
    raw = {"body": (64 + 64 + 3 + 3) / 36864, "fc": 356 / 25600}
    rhs = (36864 - math.floor(s * 36864)) + (25600 - math.floor(s * 25600)) - math.floor(s * 12)
    eps = rhs / (raw["body"] * 36864 + raw["fc"] * 25600)
    assert got["body"] == pytest.approx(eps * raw["body"]) and got["fc"] == pytest.approx(eps * raw["fc"])
    assert got["fc"] < 1
    assert sum(got[k] * math.prod(v) for k, v in shapes.items()) == pytest.approx(_budget(shapes, s))


def test_forced_dense_layers_sit_outside_the_erk_budget():
    shapes = {"stem": (8, 3, 3, 3), "body": (16, 8, 3, 3), "fc": (10, 16)}
    got = erk_densities(shapes, 0.9, dense_layers=("stem",))
    rest = {k: v for k, v in shapes.items() if k != "stem"}
    assert got["stem"] == 1.0
    assert got["body"] / got["fc"] == pytest.approx(((16 + 8 + 6) / 1152) / (26 / 160))
    assert sum(got[k] * math.prod(v) for k, v in rest.items()) == pytest.approx(_budget(rest, 0.9))
    with pytest.raises(KeyError):
        erk_densities(shapes, 0.9, dense_layers=("nope",))


# §3.1 table: sparsity of selected layers and the layers capped at dense, torchvision ResNet-50, 54 tensors
RESNET50_ERK = {
    0.80: ({"conv1": 0.1428, "layer1.0.conv2": 0.6381, "layer2.0.conv2": 0.8231, "layer3.0.conv2": 0.9126,
            "layer4.0.conv2": 0.9565, "layer4.0.downsample.0": 0.8541, "fc": 0.8518},
           {"layer1.0.conv1", "layer1.0.conv3", "layer1.0.downsample.0", "layer1.1.conv1", "layer1.1.conv3",
            "layer1.2.conv1", "layer1.2.conv3", "layer2.0.conv1"}),
    0.90: ({"conv1": 0.5800, "layer1.0.conv2": 0.8227, "layer2.0.conv2": 0.9133, "layer3.0.conv2": 0.9572,
            "layer4.0.conv2": 0.9787, "layer4.0.downsample.0": 0.9285, "fc": 0.9274},
           {"layer1.0.conv1"}),
    0.95: ({"conv1": 0.7902, "layer1.0.conv2": 0.9114, "layer2.0.conv2": 0.9567, "layer3.0.conv2": 0.9786,
            "layer4.0.conv2": 0.9894, "layer4.0.downsample.0": 0.9643, "fc": 0.9637},
           set()),
}


@pytest.mark.parametrize("s", sorted(RESNET50_ERK))
def test_erk_on_resnet50_matches_the_spec_table(s):
    with torch.device("meta"):  # shapes only: no 25M-weight initialisation
        model = create_model("resnet50")
    shapes = {n: tuple(p.shape) for n, p in M.prunable_parameters(model).items()}
    assert len(shapes) == 54 and sum(math.prod(v) for v in shapes.values()) == 25_502_912
    table, dense = RESNET50_ERK[s]
    sparsity = {n: 1 - d for n, d in erk_densities(shapes, s).items()}
    for layer, want in table.items():
        assert round(sparsity[f"{layer}.weight"], 4) == pytest.approx(want, abs=1e-9)
    assert {n.removesuffix(".weight") for n, v in sparsity.items() if v == 0.0} == dense
    overall = sum(sparsity[n] * math.prod(v) for n, v in shapes.items()) / 25_502_912
    assert round(overall, 5) == s


def test_cosine_drop_fraction_values():
    # §3.5: t = 0, T/4, T/2, 3T/4, T
    got = [cosine_drop_fraction(t, 0.3, 100) for t in (0, 25, 50, 75, 100)]
    assert got == pytest.approx([0.3, 0.2561, 0.15, 0.0439, 0.0], abs=1e-4)


# -- one update -------------------------------------------------------------------------------------------------
def test_one_update_drops_the_smallest_weights_and_grows_the_largest_gradients():
    torch.manual_seed(0)
    model = nn.Linear(10, 4, bias=False)
    pruner = RigLPruner(model, 0.5, 100, update_every=10, drop_fraction=0.3, t_end=100, distribution="uniform",
                        dense_layers=())
    mask0 = pruner.masks["weight"].clone()
    assert int(mask0.sum()) == 20
    with torch.no_grad():  # well-separated magnitudes and gradients, so the selections are unambiguous
        model.weight.copy_(torch.randperm(40).float().view(4, 10) + 1.0)
        model.weight.mul_(mask0)
    model.weight.grad = (torch.randperm(40).float().view(4, 10) + 1.0) * 0.01
    grad, w = model.weight.grad.clone(), model.weight.detach().clone()
    pruner.after_backward(0)
    pruner.after_step(0)
    k = math.floor(0.3 * 20)
    assert pruner.history[-1]["k"]["weight"] == k
    active = torch.nonzero(mask0.flatten()).squeeze(1)
    dropped = active[torch.argsort(w.flatten()[active])[:k]]  # k smallest |w| among the active
    keep = mask0.flatten().clone()
    keep[dropped] = False
    candidates = torch.nonzero(~keep).squeeze(1)
    grown = candidates[torch.argsort(grad.flatten()[candidates], descending=True)[:k]]
    want = keep.clone()
    want[grown] = True
    assert torch.equal(pruner.masks["weight"].flatten(), want)
    new = want & ~mask0.flatten()
    assert (model.weight.detach().flatten()[new] == 0).all()
    stays = want & mask0.flatten()  # kept (or dropped-and-regrown) weights keep their values
    assert torch.equal(model.weight.detach().flatten()[stays], w.flatten()[stays])


def test_update_without_after_backward_is_an_error():
    pruner = RigLPruner(nn.Linear(4, 4), 0.5, 10, update_every=5)
    with pytest.raises(RuntimeError, match="after_backward"):
        pruner.after_step(0)


def test_uniform_keeps_the_first_layer_dense():
    model = create_model("resnet_tiny", num_classes=10)
    pruner = RigLPruner(model, 0.8, 10, distribution="uniform")
    names = list(pruner.params)
    assert pruner.masks[names[0]].all()
    for name in names[1:]:
        n = pruner.masks[name].numel()
        assert int((~pruner.masks[name]).sum()) == math.floor(0.8 * n)


# -- a real training loop ---------------------------------------------------------------------------------------
def test_rigl_in_an_sgd_loop_keeps_counts_and_follows_the_schedule():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10)
    steps, update_every, t_end = 14, 2, 8
    pruner = RigLPruner(model, 0.9, steps, update_every=update_every, drop_fraction=0.3, t_end=t_end)
    shapes = {n: tuple(p.shape) for n, p in pruner.params.items()}
    densities = erk_densities(shapes, 0.9)
    counts = {n: int(m.sum()) for n, m in pruner.masks.items()}
    assert counts == {n: M.n_keep(math.prod(v), 1 - densities[n]) for n, v in shapes.items()}
    total = sum(m.numel() for m in pruner.masks.values())
    assert abs(sum(counts.values()) - _budget(shapes, 0.9)) <= len(shapes)  # ±1 weight per layer
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.randint(10, (8,), generator=gen)
        before = {n: m.clone() for n, m in pruner.masks.items()}
        training_step(model, opt, pruner, x, y, step)
        changed = any(not torch.equal(before[n], pruner.masks[n]) for n in before)
        updated = step % update_every == 0 and step <= t_end
        assert changed == (updated and step < t_end)  # f(T_end) = 0: the last update moves nothing
        if updated:
            entry = pruner.history[-1]
            fraction = 0.3 / 2 * (1 + math.cos(math.pi * step / t_end))
            assert entry["step"] == step and entry["drop_fraction"] == pytest.approx(fraction)
            assert entry["k"] == {n: math.floor(fraction * c) for n, c in counts.items()}
        for name, p in pruner.params.items():
            mask = pruner.masks[name]
            assert int(mask.sum()) == counts[name]
            assert not p.detach()[~mask].any()  # W[M == 0] == 0 after every step
            born = mask & ~before[name]
            assert not p.detach()[born].any()  # regrown weights start at exactly 0 ...
            assert not opt.state[p]["momentum_buffer"][born].any()  # ... with no momentum
        assert pruner.sparsity == pytest.approx(1 - sum(counts.values()) / total)
    assert [e["step"] for e in pruner.history] == [0, 2, 4, 6, 8]  # nothing after T_end
