"""WoodFisher (pruning_methods.md §2): the Woodbury inverse, OBS saliency and update, the pruning step against a
dense-Fisher reference and against the exact (pre-streaming) step it replaced, the gradual schedule inside a real
SGD loop, and the peak memory of the ResNet-50 recipe computed from shapes on the meta device."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from transferbench.models import create_model
from transferbench.pruning import masks as M
from transferbench.pruning.woodfisher import (
    DEFAULT_CHUNK_BYTES,
    WoodburyBlocks,
    WoodFisherPruner,
    _page_locked,
    chunk_block_bytes,
    obs_saliency,
    obs_update,
    woodbury_inverse,
)
from transferbench.pruning.woodfisher_memory import autograd_pass_bytes, woodfisher_peak_memory
from transferbench.upstream import load_recipe

f64 = torch.float64


def _batches(n: int, seed: int, shape: tuple[int, ...], classes: int, batch: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(classes, (batch,), generator=g)) for _ in range(n)]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


# -- Woodbury -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 25])
def test_woodbury_inverse_equals_explicit_inverse(n):
    g = torch.randn(3, n, 40, dtype=f64, generator=torch.Generator().manual_seed(n))  # 3 independent blocks
    damp = 1e-3
    got = woodbury_inverse(g, damp)
    want = torch.linalg.inv(damp * torch.eye(40, dtype=f64) + g.transpose(-1, -2) @ g / n)
    assert got.shape == (3, 40, 40)
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-10
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_woodbury_inverse_without_gradients_is_identity_over_damp():
    assert torch.equal(woodbury_inverse(torch.zeros(0, 4, dtype=f64), 0.5), 2.0 * torch.eye(4, dtype=f64))
    with pytest.raises(ValueError):
        woodbury_inverse(torch.zeros(1, 4), 0.0)


# -- OBS saliency and update ----------------------------------------------------------------------------------
def test_obs_on_a_hand_computed_2x2_quadratic():
    fisher = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=f64)
    finv = torch.tensor([[2.0, -1.0], [-1.0, 2.0]], dtype=f64) / 3  # by hand
    w = torch.tensor([1.0, 0.5], dtype=f64)
    delta = obs_update(w, finv, torch.tensor([True, False]))
    # δw = -w_0 F⁻¹e_0 / [F⁻¹]_00 = -(2/3, -1/3) / (2/3) = (-1, 0.5)
    assert torch.allclose(delta, torch.tensor([-1.0, 0.5], dtype=f64))
    # ρ_0 = w_0² / (2·2/3) = 0.75 = ½ δwᵀ F δw
    assert obs_saliency(w, finv.diagonal())[0].item() == pytest.approx(0.75)
    assert (0.5 * delta @ fisher @ delta).item() == pytest.approx(0.75)
    assert torch.equal(obs_update(w, finv, torch.tensor([True, False]), scale=0.0), torch.zeros(2, dtype=f64))


def test_obs_update_is_the_constrained_minimum_of_the_quadratic():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, dtype=f64, generator=gen)
    fisher = a @ a.T + 0.5 * torch.eye(6, dtype=f64)
    finv = torch.linalg.inv(fisher)
    w = torch.randn(6, dtype=f64, generator=gen)
    for q in range(6):
        # KKT system of min ½ δwᵀFδw  s.t.  w_q + δw_q = 0, solved independently
        e = torch.zeros(6, dtype=f64)
        e[q] = 1.0
        kkt = torch.zeros(7, 7, dtype=f64)
        kkt[:6, :6], kkt[:6, 6], kkt[6, :6] = fisher, e, e
        rhs = torch.cat([torch.zeros(6, dtype=f64), -w[q:q + 1]])
        delta_ref = torch.linalg.solve(kkt, rhs)[:6]
        delta = obs_update(w, finv, e.bool())
        assert torch.allclose(delta, delta_ref, atol=1e-10)
        assert abs((w + delta)[q].item()) < 1e-10
        loss_increase = (0.5 * delta_ref @ fisher @ delta_ref).item()
        assert obs_saliency(w, finv.diagonal())[q].item() == pytest.approx(loss_increase)
    # several pruned weights: the sum of the single-weight updates (§2.1, joint-sparsify)
    both = obs_update(w, finv, torch.tensor([True, False, True, False, False, False]))
    singles = [obs_update(w, finv, torch.arange(6) == q) for q in (0, 2)]
    assert torch.allclose(both, singles[0] + singles[1])


# -- the pruning step -----------------------------------------------------------------------------------------
def _reference_step(model: nn.Module, masks: dict, batches, damp: float, c: int, sparsity: float, scale: float):
    """Dense-Fisher reference for one global WoodFisher step: explicit inverse per block, sort-based top-k."""
    params = M.prunable_parameters(model)
    model.eval()
    rows = []
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
        rows.append([(g * masks[n]).flatten().to(f64) for n, g in zip(params, grads, strict=True)])
    model.train()
    stats, blocks = [], []
    for i, (name, p) in enumerate(params.items()):
        w = p.detach().flatten().to(f64)
        for start in range(0, w.numel(), c):
            sl = slice(start, min(start + c, w.numel()))
            g = torch.stack([r[i][sl] for r in rows])
            finv = torch.linalg.inv(damp * torch.eye(g.shape[1], dtype=f64) + g.T @ g / len(rows))
            stat = w[sl] ** 2 / (2 * finv.diagonal())
            stats.append(torch.where(masks[name].flatten()[sl], stat, torch.full_like(stat, -math.inf)))
            blocks.append((name, sl, finv))
    stat = torch.cat(stats)
    kept = torch.zeros_like(stat, dtype=torch.bool)
    kept[torch.argsort(stat, descending=True)[:stat.numel() - math.floor(sparsity * stat.numel())]] = True
    new_w, new_m, offset = {n: p.detach().flatten().to(f64).clone() for n, p in params.items()}, {}, 0
    for name, p in params.items():
        new_m[name] = kept[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    for name, sl, finv in blocks:
        w = params[name].detach().flatten().to(f64)[sl]
        pruned = masks[name].flatten()[sl] & ~new_m[name].flatten()[sl]
        u = torch.where(pruned, -w / finv.diagonal(), torch.zeros_like(w))
        new_w[name][sl] += scale * finv @ u
    return {n: (new_w[n].view_as(p) * new_m[n]).float() for n, p in params.items()}, new_m


def test_prune_step_matches_a_dense_fisher_reference_over_two_nested_steps():
    model, batches = _mlp(), _batches(6, seed=2, shape=(6,), classes=3)
    # c = 7 splits the 30- and 15-weight layers into 7,7,7,7,2 and 7,7,1: padded blocks must be exact
    pruner = WoodFisherPruner(model, 0.6, 10, t0=0, t_end=1, prune_every=1, fisher_batches=lambda: iter(batches),
                              num_grads=6, block_size=7, damp=1e-2, scale=0.9)
    for sparsity in (0.3, 0.6):  # the second step sees masked gradients and must keep the masks nested
        old = {n: m.clone() for n, m in pruner.masks.items()}
        ref_model = _mlp()
        ref_model.load_state_dict(model.state_dict())
        want_w, want_m = _reference_step(ref_model, old, batches, 1e-2, 7, sparsity, 0.9)
        pruner.prune_to(sparsity)
        for name, p in pruner.params.items():
            assert torch.equal(pruner.masks[name], want_m[name])
            assert torch.allclose(p.detach(), want_w[name], atol=1e-6)
            assert not (pruner.masks[name] & ~old[name]).any()
        zeros = sum(int((~m).sum()) for m in pruner.masks.values())
        assert zeros == math.floor(sparsity * 45)
    assert all(p.grad is None for p in model.parameters())  # gradient collection leaves .grad alone


def test_identity_fisher_is_global_magnitude_pruning_and_keeps_the_other_weights():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10)
    params = M.prunable_parameters(model)
    before = {n: p.detach().clone() for n, p in params.items()}
    pruner = WoodFisherPruner(model, 0.7, 1, t0=0, t_end=0, prune_every=1, num_grads=0, block_size=64, damp=1e-4)
    pruner.before_step(0)  # one-shot schedule: t0 == t_end
    want = M.global_masks(M.magnitude_scores(before), 0.7)
    for name, p in params.items():
        assert torch.equal(pruner.masks[name], want[name])
        assert torch.equal(p.detach(), before[name] * want[name])  # F = λI: δw = -w_q e_q only


def test_identity_fisher_layerwise_scope_is_layerwise_magnitude_pruning():
    model = _mlp()
    before = {n: p.detach().clone() for n, p in M.prunable_parameters(model).items()}
    pruner = WoodFisherPruner(model, 0.5, 1, t0=0, t_end=0, prune_every=1, num_grads=0, scope="layerwise")
    pruner.prune_to(0.5)
    want = M.layerwise_masks(M.magnitude_scores(before), 0.5)
    assert all(torch.equal(pruner.masks[n], want[n]) for n in want)


def test_gradual_woodfisher_in_an_sgd_loop_reaches_the_exact_target():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10)
    train = _batches(10, seed=3, shape=(3, 16, 16), classes=10)
    fisher = _batches(4, seed=4, shape=(3, 16, 16), classes=10)
    pruner = WoodFisherPruner(model, 0.8, 10, t0=2, t_end=8, prune_every=3, fisher_batches=lambda: iter(fisher),
                              num_grads=4, block_size=64, damp=1e-4)
    assert pruner.prune_steps == [2, 5, 8]
    expected = {2: 0.0, 5: 0.8 * (1 - 0.5**3), 8: 0.8}  # cubic from 0 at t0 = 2 to 0.8 at t_end = 8 (§1.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    total = sum(p.numel() for p in pruner.params.values())
    old = {n: m.clone() for n, m in pruner.masks.items()}
    for step, (x, y) in enumerate(train):
        running = [b.clone() for b in model.buffers()]
        pruner.before_step(step, opt)
        if step in pruner.prune_steps:
            # eval-mode gradient collection: BN statistics untouched by the pruning step (§2.5)
            assert all(torch.equal(a, b) for a, b in zip(running, model.buffers(), strict=True))
            zeros = sum(int((~m).sum()) for m in pruner.masks.values())
            assert zeros == math.floor(expected[step] * total + 1e-9)
        assert all(not (pruner.masks[n] & ~old[n]).any() for n in old)  # nested
        old = {n: m.clone() for n, m in pruner.masks.items()}
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.after_backward(step)
        opt.step()
        pruner.after_step(step, opt)
        assert torch.isfinite(loss)
        for name, p in pruner.params.items():
            assert not p.detach()[~pruner.masks[name]].any()  # W[M == 0] == 0 after every step
    pruner.finalize()
    assert sum(int((~m).sum()) for m in pruner.masks.values()) == math.floor(0.8 * total)
    assert pruner.sparsity == pytest.approx(0.8, abs=1 / total)


def test_too_few_fisher_batches_is_an_error():
    model = _mlp()
    batches = _batches(2, seed=0, shape=(6,), classes=3)
    pruner = WoodFisherPruner(model, 0.5, 1, t0=0, t_end=0, prune_every=1, fisher_batches=lambda: iter(batches),
                              num_grads=3)
    with pytest.raises(ValueError, match="needs 3"):
        pruner.prune_to(0.5)
    with pytest.raises(ValueError):
        WoodFisherPruner(model, 0.5, 1, t0=0, t_end=0, prune_every=1, num_grads=3)  # no fisher_batches


# -- the streamed step equals today's exact one ---------------------------------------------------------------
def _pad_blocks(flat: torch.Tensor, c: int) -> torch.Tensor:
    blocks = math.ceil(flat.shape[-1] / c)
    padding = flat.new_zeros((*flat.shape[:-1], blocks * c - flat.shape[-1]))
    return torch.cat([flat, padding], dim=-1).unflatten(-1, (blocks, c))


def _exact_step(model: nn.Module, masks: dict, batches, sparsity: float, c: int, damp: float, scale: float,
                stored: torch.dtype = f64):
    """The pruning step as it was before streaming (kept as the reference): every gradient stacked ``[N, numel]``
    (rounded through ``stored``, as ``grad_dtype`` does), each layer's c×c inverses in the closed form with
    ``torch.linalg.solve``, global selection, then the summed single-weight OBS updates. Returns weights, masks."""
    params = M.prunable_parameters(model)
    model.eval()
    rows: dict[str, list] = {name: [] for name in params}
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
        for name, g in zip(params, grads, strict=True):
            rows[name].append((g * masks[name]).flatten().to(stored).to(f64))
    model.train()
    finvs, weights, stats = {}, {}, {}
    for name, p in params.items():
        size = min(c, p.numel())
        g = _pad_blocks(torch.stack(rows[name]), size).transpose(0, 1)  # [B, N, c]
        gram = g @ g.transpose(-1, -2)
        gram.diagonal(dim1=-2, dim2=-1).add_(len(batches) * damp)
        finvs[name] = (torch.eye(size, dtype=f64) - g.transpose(-1, -2) @ torch.linalg.solve(gram, g)) / damp
        weights[name] = _pad_blocks(p.detach().flatten().to(f64), size)
        rho = obs_saliency(weights[name], finvs[name].diagonal(dim1=-2, dim2=-1)).flatten()[:p.numel()]
        stats[name] = rho.view_as(p).masked_fill(~masks[name], -math.inf)
    new = M.global_masks(stats, sparsity)
    out = {}
    for name, p in params.items():
        new[name] = new[name] & masks[name]
        pruned = _pad_blocks((masks[name] & ~new[name]).flatten(), finvs[name].shape[-1])
        delta = obs_update(weights[name], finvs[name], pruned, scale).flatten()[:p.numel()].view_as(p)
        out[name] = (p.detach() + delta.to(p.dtype)) * new[name]
    return out, new


def _tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_tiny", num_classes=10)


SETUPS = {  # model, fisher mini-batches, block size (both split layers into padded blocks)
    "mlp": (_mlp, lambda: _batches(6, seed=2, shape=(6,), classes=3), 7),
    "resnet_tiny": (_tiny_resnet, lambda: _batches(4, seed=4, shape=(3, 16, 16), classes=10), 64),
}


def _three_blocks(c: int, n: int) -> int:
    return 3 * chunk_block_bytes(c, n, f64, f64, offloaded=False)


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("chunk", ["one_block", "three_blocks", "default"])
def test_streamed_step_equals_the_exact_step_over_two_nested_steps(setup, chunk):
    make, make_batches, c = SETUPS[setup]
    model, batches = make(), make_batches()
    chunk_bytes = {"one_block": 1, "three_blocks": _three_blocks(c, len(batches)), "default": DEFAULT_CHUNK_BYTES}
    pruner = WoodFisherPruner(model, 0.6, 10, t0=0, t_end=1, prune_every=1, fisher_batches=lambda: iter(batches),
                              num_grads=len(batches), block_size=c, damp=1e-3, scale=0.9,
                              chunk_bytes=chunk_bytes[chunk])
    for sparsity in (0.3, 0.6):  # the second step sees masked gradients and pruned weights
        reference = make()
        reference.load_state_dict(model.state_dict())
        want_w, want_m = _exact_step(reference, pruner.masks, batches, sparsity, c, 1e-3, 0.9)
        pruner.prune_to(sparsity)
        for name, p in pruner.params.items():
            assert torch.equal(pruner.masks[name], want_m[name]), name
            assert torch.allclose(p.detach(), want_w[name], rtol=1e-5, atol=1e-7), name
    assert all(p.grad is None for p in model.parameters())


def test_narrow_gradient_storage_only_rounds_the_stored_gradients():
    model, batches = _tiny_resnet(), SETUPS["resnet_tiny"][1]()
    pruner = WoodFisherPruner(model, 0.5, 10, t0=0, t_end=1, prune_every=1, fisher_batches=lambda: iter(batches),
                              num_grads=4, block_size=64, damp=1e-3, grad_dtype=torch.bfloat16)
    assert all(b.dtype == torch.bfloat16 for b in pruner.gradient_buffers().values())
    reference = _tiny_resnet()
    reference.load_state_dict(model.state_dict())
    want_w, want_m = _exact_step(reference, pruner.masks, batches, 0.5, 64, 1e-3, 1.0, stored=torch.bfloat16)
    pruner.prune_to(0.5)
    for name, p in pruner.params.items():
        assert torch.equal(pruner.masks[name], want_m[name])
        assert torch.allclose(p.detach(), want_w[name], rtol=1e-5, atol=1e-7)


def test_micro_batches_give_the_mini_batch_gradient():
    batches = SETUPS["resnet_tiny"][1]()
    grads = []
    for micro in (None, 3):  # batches of 8 in pieces of 3, 3, 2
        pruner = WoodFisherPruner(_tiny_resnet(), 0.5, 10, t0=0, t_end=1, prune_every=1, num_grads=4, block_size=64,
                                  fisher_batches=lambda: iter(batches), grad_microbatch=micro)
        with torch.enable_grad():
            grads.append(pruner.collect_gradients())
    for name, whole in grads[0].items():
        assert whole.abs().max() > 0
        assert torch.allclose(grads[1][name], whole, rtol=0, atol=1e-6 * whole.abs().max().item())  # float32 sums


def test_implicit_inverse_gives_the_explicit_diagonal_and_products():
    g = torch.randn(2, 5, 9, dtype=f64, generator=torch.Generator().manual_seed(3))
    u = torch.randn(2, 9, dtype=f64, generator=torch.Generator().manual_seed(4))
    want = torch.linalg.inv(1e-2 * torch.eye(9, dtype=f64) + g.transpose(-1, -2) @ g / 5)
    inverse = WoodburyBlocks(g, 1e-2)
    assert torch.allclose(inverse.diagonal(), want.diagonal(dim1=-2, dim2=-1), rtol=1e-9)
    assert torch.allclose(inverse.matvec(u), (want @ u.unsqueeze(-1)).squeeze(-1), rtol=1e-9)
    no_grads = WoodburyBlocks(torch.zeros(2, 0, 9, dtype=f64), 0.5)
    assert torch.equal(no_grads.diagonal(), torch.full((2, 9), 2.0, dtype=f64))
    assert torch.equal(no_grads.matvec(u), 2.0 * u)


def test_page_locking_registers_every_host_buffer_and_always_unregisters(monkeypatch):
    calls = []

    class FakeCudart:
        def cudaHostRegister(self, ptr, size, flags):
            calls.append(("register", ptr, size))
            return 0

        def cudaHostUnregister(self, ptr):
            calls.append(("unregister", ptr))
            return 0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", FakeCudart)
    monkeypatch.setattr(torch.cuda, "check_error", lambda code: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    a, b, empty = torch.zeros(3, 4), torch.zeros(5, dtype=torch.float16), torch.zeros(0)
    with pytest.raises(RuntimeError, match="inside"), _page_locked([a, empty, b], enabled=True):
        assert calls == [("register", a.data_ptr(), 48), ("register", b.data_ptr(), 10)]
        raise RuntimeError("inside")
    assert calls[2:] == [("unregister", a.data_ptr()), ("unregister", b.data_ptr())]
    calls.clear()
    with _page_locked([a], enabled=False):
        pass
    assert calls == []


# -- peak memory from shapes ----------------------------------------------------------------------------------
def test_autograd_pass_counts_each_saved_storage_once():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 5))
    total, largest = autograd_pass_bytes(model, batch=2, image_size=8)
    conv_input, relu_output = 2 * 3 * 8 * 8 * 4, 2 * 4 * 8 * 8 * 4  # the Linear saves the ReLU's output again
    assert largest == relu_output
    assert conv_input + relu_output <= total < conv_input + relu_output + 200  # + the loss's few bytes
    with pytest.raises(ValueError, match="meta"):
        autograd_pass_bytes(_mlp(), batch=2, image_size=8)


def test_calculator_counts_the_buffers_the_pruner_allocates():
    knobs = {"num_grads": 4, "grad_batch_size": 8, "block_size": 64, "grad_dtype": "bfloat16"}
    pruner = WoodFisherPruner(_tiny_resnet(), 0.5, 10, t0=0, t_end=1, prune_every=1, num_grads=4, block_size=64,
                              fisher_batches=lambda: iter(()), grad_dtype=torch.bfloat16)
    with torch.device("meta"):
        meta = create_model("resnet_tiny", num_classes=10)
    peak = woodfisher_peak_memory(meta, knobs, image_size=16)
    buffers = pruner.gradient_buffers()
    assert peak.host == peak.parts["gradients"] == sum(b.numel() * b.element_size() for b in buffers.values())
    on_device = woodfisher_peak_memory(meta, {**knobs, "offload_grads": False}, image_size=16)
    assert on_device.host == 0 and on_device.device > peak.device
    layers = zip(buffers.values(), pruner.layout, strict=True)
    assert all(b.shape == (layer.blocks, 4, layer.size) for b, layer in layers)


GB = 1e9
DEVICE_BUDGET, HOST_BUDGET = 60 * GB, 48 * GB  # docs/paper_scale.md, "WoodFisher memory"


def test_resnet50_recipe_fits_the_memory_budget_and_the_old_figures_are_reproduced():
    recipe = load_recipe("imagenet_resnet50")
    knobs, size = recipe["methods"]["woodfisher"], recipe["image_size"]
    assert (knobs["num_grads"], knobs["grad_batch_size"], knobs["block_size"]) == (400, 400, 2000)  # §2.3
    with torch.device("meta"):
        model = torchvision.models.resnet50()
    assert sum(p.numel() for p in M.prunable_parameters(model).values()) == 25_502_912  # §0.1

    exact = woodfisher_peak_memory(model, knobs, size, algorithm="exact")
    # issue 12's independent figures: 40.8 GB of gradients (doubled by torch.stack), 204.5 GB of inverses,
    # the largest layer's 18.9 GB
    assert exact.parts["gradients"] == pytest.approx(40.8 * GB, rel=1e-3)
    assert exact.phases["stack"] >= 2 * exact.parts["gradients"]
    assert exact.parts["inverses"] == pytest.approx(204.5 * GB, rel=1e-3)
    assert exact.parts["largest_inverse"] == pytest.approx(18.9 * GB, rel=1e-2)
    assert exact.device > 245 * GB and exact.host == 0

    streamed = woodfisher_peak_memory(model, knobs, size)
    assert streamed.device < DEVICE_BUDGET and streamed.host < HOST_BUDGET
    assert streamed.phase == "gradients"  # the autograd pass of 400 images; the Fisher phases take ~1.4 GB
    assert max(streamed.phases[p] for p in ("scores", "selection", "update")) < 2 * GB
    assert streamed.host == pytest.approx(40.9 * GB, rel=1e-2)
    narrow = woodfisher_peak_memory(model, {**knobs, "grad_dtype": "bfloat16", "grad_microbatch": 100}, size)
    assert narrow.host == streamed.host // 2 and narrow.device < 16 * GB
