"""CrAM / CrAM+, one-shot pruning and BN recalibration (pruning_methods.md §6.1, §6.3, §6.5, checks §6.7)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from transferbench.models import create_model
from transferbench.pruning import masks as M
from transferbench.pruning.bn import batchnorm_modules, bn_recalibrate
from transferbench.pruning.cram import CrAM
from transferbench.pruning.oneshot import one_shot_prune
from transferbench.sparsity import prunable_weights

# ---------------------------------------------------------------------------------------------------------------
# A quadratic L(θ) = ½‖Aθ − b‖² over one 1×4 weight, so a CrAM step can be worked out by hand.
A = np.array([[2.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.5], [1.0, 0.0, 3.0, 0.0], [0.0, 0.5, 0.0, 1.0]])
B = np.array([1.0, 0.0, -1.0, 0.5])
THETA = np.array([0.5, -0.6, 0.2, 0.4])


class Quadratic(nn.Module):
    def __init__(self, theta: np.ndarray):
        super().__init__()
        self.lin = nn.Linear(4, 1, bias=False).double()
        with torch.no_grad():
            self.lin.weight.copy_(torch.from_numpy(theta)[None])

    def loss(self) -> torch.Tensor:
        residual = torch.from_numpy(A) @ self.lin.weight.flatten() - torch.from_numpy(B)
        return 0.5 * (residual**2).sum()


def grad_np(theta: np.ndarray) -> np.ndarray:
    return A.T @ (A @ theta - B)


def cram_quadratic(steps: int = 1, **kwargs) -> tuple[Quadratic, CrAM]:
    model = Quadratic(THETA)
    lr = kwargs.pop("lr", 0.1)
    opt = CrAM(model, torch.optim.SGD(model.parameters(), lr=lr), model, **kwargs)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model.loss()
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return model, opt


@pytest.mark.parametrize("plus", [False, True])
def test_step_matches_hand_computed_quadratic(plus: bool) -> None:
    rho, lr = 0.1, 0.1
    g = grad_np(THETA)                                     # [2.5, -0.6, 6.5, -0.6]
    perturbed = THETA + rho * g                            # [0.75, -0.66, 0.85, 0.34]: unnormalised ascent
    # k = 0.5 keeps 4 - floor(2) = 2 entries: the largest |θ̃| are 0.85 (idx 2) and 0.75 (idx 0). The ascent
    # matters: the top-2 of |θ| itself would be idx 1 and 0.
    mask = np.array([True, False, True, False])
    assert set(np.argsort(-np.abs(perturbed))[:2]) == {0, 2}
    g_compressed = grad_np(perturbed * mask)
    expected = THETA - lr * (g_compressed + (g if plus else 0.0))

    model, opt = cram_quadratic(rho=rho, lr=lr, sparsities=[0.5], plus=plus)
    np.testing.assert_allclose(model.lin.weight.detach().numpy()[0], expected, rtol=0, atol=1e-12)
    assert opt.last_masks["lin.weight"].flatten().tolist() == mask.tolist()


def test_zero_sparsity_ascent_is_unnormalised_sam_on_quadratic() -> None:
    rho, lr = 0.2, 0.05
    model, _ = cram_quadratic(rho=rho, lr=lr, sparsities=[0.0], plus=False)
    expected = THETA - lr * grad_np(THETA + rho * grad_np(THETA))   # θ − η∇L(θ + ρ∇L(θ)), no ‖g‖ division
    np.testing.assert_allclose(model.lin.weight.detach().numpy()[0], expected, rtol=0, atol=1e-12)


def test_multi_draws_are_deterministic_given_generator() -> None:
    def run() -> tuple[list[float], torch.Tensor]:
        model = Quadratic(THETA)
        opt = CrAM(model, torch.optim.SGD(model.parameters(), lr=0.01), model, rho=0.05,
                   sparsities=[0.25, 0.5, 0.75], generator=torch.Generator().manual_seed(3))

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = model.loss()
            loss.backward()
            return loss

        drawn = []
        for _ in range(12):
            opt.step(closure)
            drawn.append(opt.last_target)
            assert M.sparsity_of(opt.last_masks) == opt.last_target   # 4 weights: every k here is exact
        return drawn, model.lin.weight.detach().clone()

    draws_a, weight_a = run()
    draws_b, weight_b = run()
    assert draws_a == draws_b and torch.equal(weight_a, weight_b)
    assert set(draws_a) <= {0.25, 0.5, 0.75} and len(set(draws_a)) > 1


# ---------------------------------------------------------------------------------------------------------------
# resnet_tiny (BN, convs, fc) on a tiny batch.

def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet_tiny", num_classes=10)


def batch(seed: int = 1, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=gen), torch.randint(10, (n,), generator=gen)


def make_closure(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def cram_tiny(steps: int = 1, lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0,
              **kwargs) -> tuple[nn.Module, CrAM]:
    model = tiny()
    model.train()
    base = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    opt = CrAM(model, base, model, **kwargs)
    x, y = batch()
    for _ in range(steps):
        opt.step(make_closure(model, opt, x, y))
    return model, opt


def sgd_tiny(steps: int = 1, lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0) -> nn.Module:
    model = tiny()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    x, y = batch()
    closure = make_closure(model, opt, x, y)
    for _ in range(steps):
        closure()
        opt.step()
    return model


def assert_same_params(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=atol, msg=name)


def test_rho0_k0_is_plain_sgd() -> None:
    # C = id and no ascent: both passes give g, and without CrAM+ the update is exactly the base optimizer's.
    kw = dict(steps=2, lr=0.1, momentum=0.9, weight_decay=5e-4)
    model, _ = cram_tiny(rho=0.0, sparsities=[0.0], plus=False, **kw)
    assert_same_params(model, sgd_tiny(**kw))


def test_rho0_k0_plus_uses_twice_the_gradient() -> None:
    model, _ = cram_tiny(rho=0.0, sparsities=[0.0], plus=True, lr=0.05)
    assert_same_params(model, sgd_tiny(lr=0.1))


def test_k0_is_unnormalised_sam_on_resnet() -> None:
    rho, lr = 0.05, 0.1
    model, _ = cram_tiny(rho=rho, sparsities=[0.0], plus=False, lr=lr)

    reference = tiny()
    reference.train()
    x, y = batch()
    params = list(reference.parameters())
    grads = torch.autograd.grad(nn.functional.cross_entropy(reference(x), y), params)
    with torch.no_grad():
        dense = [p.clone() for p in params]
        for p, g in zip(params, grads, strict=True):
            p.add_(rho * g)
    grads_at_perturbed = torch.autograd.grad(nn.functional.cross_entropy(reference(x), y), params)
    with torch.no_grad():
        for p, theta, g in zip(params, dense, grads_at_perturbed, strict=True):
            p.copy_(theta - lr * g)
    assert_same_params(model, reference)


def test_model_is_dense_after_every_step_and_compressed_point_is_exact() -> None:
    model, opt = cram_tiny(steps=2, rho=0.1, sparsities=[0.9], momentum=0.9, weight_decay=5e-4)
    for name, weight in prunable_weights(model).items():
        assert int(torch.count_nonzero(weight)) == weight.numel(), name
    total = sum(m.numel() for m in opt.last_masks.values())
    assert set(opt.last_masks) == set(prunable_weights(model))     # global C: all convs incl. conv1, and fc
    assert M.sparsity_of(opt.last_masks) == math.floor(0.9 * total) / total


def test_uniform_compression_skips_stem_and_head() -> None:
    model, opt = cram_tiny(rho=0.1, sparsities=[0.6], uniform=True)
    assert set(opt.last_masks) == set(prunable_weights(model)) - {"conv1.weight", "fc.weight"}
    for name, mask in opt.last_masks.items():
        assert int((~mask).sum()) == math.floor(0.6 * mask.numel()), name


def test_sparse_grad_masks_the_compressed_point_gradient() -> None:
    rho, k = 0.1, 0.7
    x, y = batch()
    # The mask of C(θ̃) must come from θ̃ = θ + ρ∇L(θ), computed here independently of CrAM.
    ref = tiny()
    ref.train()
    ref_weights = prunable_weights(ref)
    grads = torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), list(ref_weights.values()))
    perturbed = {name: (w + rho * g).abs() for (name, w), g in zip(ref_weights.items(), grads, strict=True)}
    expected_masks = M.global_masks(perturbed, k)

    def applied_grads(sparse_grad: bool) -> dict[str, torch.Tensor]:
        """The gradient the base optimizer applies (plus=False: just ĝ, masked or not)."""
        model = tiny()
        model.train()
        base = torch.optim.SGD(model.parameters(), lr=1.0)
        opt = CrAM(model, base, model, rho=rho, sparsities=[k], plus=False, sparse_grad=sparse_grad)
        captured: dict[str, torch.Tensor] = {}
        params = dict(model.named_parameters())
        base.register_step_pre_hook(lambda *_: captured.update({n: p.grad.clone() for n, p in params.items()}))
        opt.step(make_closure(model, opt, x, y))
        assert all(torch.equal(opt.last_masks[n], expected_masks[n]) for n in ref_weights)
        return captured

    sparse, straight_through = applied_grads(True), applied_grads(False)
    for name, grad in straight_through.items():
        if name in expected_masks:  # ĝ ⊙ M on the compressed weights ...
            assert torch.equal(sparse[name], grad * expected_masks[name]), name
        else:  # ... the full ĝ on biases and BN parameters
            assert torch.equal(sparse[name], grad), name
    # without sparse_grad the straight-through gradient reaches pruned weights too, so the masking is visible
    assert int(torch.count_nonzero(torch.cat([straight_through[n][~m] for n, m in expected_masks.items()]))) > 100


def test_bn_running_stats_match_one_clean_forward() -> None:
    model, _ = cram_tiny(rho=0.1, sparsities=[0.8])
    reference = tiny()
    reference.train()
    with torch.no_grad():
        reference(batch()[0])
    stats = {n: b for n, b in model.named_buffers()}
    for name, buf in reference.named_buffers():
        assert torch.equal(stats[name], buf), name
    assert all(m.momentum == 0.1 for m in batchnorm_modules(model))   # momentum restored after the second pass


def nm_group_counts(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Kept entries per group of m consecutive input channels at a fixed (out, kh, kw) / out feature."""
    t = mask.permute(0, 2, 3, 1) if mask.dim() == 4 else mask     # input dimension last
    return t.reshape(*t.shape[:-1], t.shape[-1] // m, m).sum(-1)


def assert_nm(masks: M.Masks, n: int, m: int) -> None:
    for name, mask in masks.items():
        in_dim = mask.shape[1]
        if in_dim % m == 0:
            assert (nm_group_counts(mask, m) == n).all(), name
        else:  # the stem (3 input channels): groups straddle kernel positions (§6.1 quirk), still N of every M
            assert (mask.permute(0, 2, 3, 1).reshape(-1, m).sum(-1) == n).all(), name
    assert M.sparsity_of(masks) == 1 - n / m


def test_cram_nm_compresses_every_layer_n_of_m() -> None:
    model, opt = cram_tiny(steps=3, rho=0.1, nm=[(2, 4), (4, 8)], generator=torch.Generator().manual_seed(0))
    n, m = opt.last_target
    assert (n, m) in {(2, 4), (4, 8)}
    assert set(opt.last_masks) == set(prunable_weights(model))
    assert_nm(opt.last_masks, n, m)
    assert all(int(torch.count_nonzero(w)) == w.numel() for w in prunable_weights(model).values())


# ---------------------------------------------------------------------------------------------------------------
# One-shot pruning and BN recalibration.

@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_one_shot_nm(pattern: str) -> None:
    model = tiny()
    masks = one_shot_prune(model, pattern)
    n, m = map(int, pattern.split(":"))
    assert set(masks) == set(prunable_weights(model))
    assert_nm(masks, n, m)
    weights = prunable_weights(model)
    assert all(int(torch.count_nonzero(weights[k])) == int(mask.sum()) for k, mask in masks.items())


def test_one_shot_global_is_exact_and_matches_global_masks() -> None:
    model = tiny()
    expected = M.global_masks(M.magnitude_scores(prunable_weights(copy.deepcopy(model))), 0.8)
    masks = one_shot_prune(model, 0.8)
    assert all(torch.equal(masks[k], expected[k]) for k in expected) and set(masks) == set(expected)
    weights = prunable_weights(model)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights.values())
    assert abs(zeros - 0.8 * total) <= 1
    assert all(torch.equal(weights[k] != 0, masks[k]) for k in masks)


def test_one_shot_uniform_skips_stem_and_head() -> None:
    model = tiny()
    before = {k: w.detach().clone() for k, w in prunable_weights(model).items()}
    masks = one_shot_prune(model, 0.7, scope="uniform")
    assert set(masks) == set(before) - {"conv1.weight", "fc.weight"}
    weights = prunable_weights(model)
    for name in ("conv1.weight", "fc.weight"):
        assert torch.equal(weights[name], before[name])
    for name, mask in masks.items():
        assert int((~mask).sum()) == math.floor(0.7 * mask.numel()), name
        assert int(torch.count_nonzero(weights[name])) == int(mask.sum()), name
    with pytest.raises(ValueError):
        one_shot_prune(tiny(), 0.5, scope="nm")


def test_bn_recalibration_changes_only_running_stats() -> None:
    model = tiny()
    one_shot_prune(model, 0.7)
    model.train()
    with torch.no_grad():  # give the running stats a non-default history to be replaced
        model(batch(seed=5)[0] * 3 + 1)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    stats = {k: b.clone() for k, b in model.named_buffers()}
    loader = [batch(seed=s) for s in (11, 12)]          # 2 batches, cycled to reach iters=5

    returned = bn_recalibrate(model, loader, iters=5)
    assert returned is model and not model.training
    assert all(not m.training for m in model.modules())
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert int(buf) == 5, name
        else:
            assert not torch.allclose(buf, stats[name]), name
    assert all(m.momentum == 0.1 for m in batchnorm_modules(model))


def test_step_needs_a_closure_and_scheduler_drives_base_lr() -> None:
    model = Quadratic(THETA)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = CrAM(model, base, model, rho=0.1)
    with pytest.raises(RuntimeError):
        opt.step()
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(lambda: (opt.zero_grad(), model.loss().backward())[0])
    scheduler.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.05)


# The calibration sample (§6.3: 1000 random training images, seed 42) --------------------------------------------


def test_the_calibration_sample_is_drawn_from_every_class_of_a_class_sorted_imagefolder(tmp_path) -> None:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    from transferbench.pruning.bn import balanced_sample, dataset_labels, indices_digest
    from transferbench.tasks import Transformed

    sizes = {"n01": 9, "n02": 3, "n03": 7, "n04": 5}  # an ImageFolder lists class by class: a prefix is one class
    for wnid, count in sizes.items():
        (tmp_path / wnid).mkdir()
        for i in range(count):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / wnid / f"{i}.png")
    folder = ImageFolder(tmp_path)
    labels = dataset_labels(Transformed(folder, lambda x: x))  # labels read through the wrapper, no image decoded
    assert list(labels) == folder.targets and list(labels[:9]) == [0] * 9

    sample = balanced_sample(labels, 12, seed=42)
    counts = np.bincount(labels[sample], minlength=4)
    assert len(set(sample)) == 12 and list(counts) == [3, 3, 3, 3]  # 12 over 4 classes: three each
    uneven = balanced_sample(labels, 16, seed=42)  # n02 has only 3: its fourth turn goes to the others
    assert sorted(np.bincount(labels[uneven], minlength=4)) == [3, 4, 4, 5] and len(set(uneven)) == 16
    assert sorted(balanced_sample(labels, 1000, seed=42)) == list(range(24))  # more than there is: all of it
    assert balanced_sample(labels, 12, seed=42) == sample  # seeded: the same sample and the same digest
    assert indices_digest(sample) == indices_digest(list(sample)) != indices_digest(balanced_sample(labels, 12, 7))
    with pytest.raises(TypeError, match="no targets or labels"):
        dataset_labels(object())
