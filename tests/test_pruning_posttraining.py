"""One-shot post-training pruners (Wanda, SparseGPT) against independent computations: the closed-form optimal
brain surgeon, the sequential OBS solved directly, numpy's Wanda scores, and the reconstruction-error ordering."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from transferbench.pruning.posttraining import (
    LayerStats,
    collect_stats,
    forward_order,
    layer_inputs,
    prune_one_shot,
    reconstruction_error,
    sparsegpt,
    weight_matrix,
)


def _stats(x: torch.Tensor) -> LayerStats:
    x = x.double()
    return LayerStats(x.T @ x, len(x))


def _damped(stats: LayerStats, dampening: float = 0.01) -> torch.Tensor:
    h = stats.gram.clone()
    h.diagonal().add_(dampening * h.diagonal().mean())
    return h


def test_sparsegpt_pruning_the_first_column_is_the_closed_form_optimal_brain_surgeon():
    torch.manual_seed(0)
    x, w = torch.randn(64, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    stats = _stats(x)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, 0] = False
    pruned, kept = sparsegpt(w, stats, mask=mask, block=2)
    h = _damped(stats)
    # the optimum with w_0 = 0: the other weights re-fit by least squares on the (damped) Gram matrix
    rest = torch.linalg.solve(h[1:, 1:], h[1:, :] @ w.T).T
    torch.testing.assert_close(pruned[:, 1:], rest, rtol=1e-9, atol=1e-9)
    assert (pruned[:, 0] == 0).all() and torch.equal(kept, mask)
    # and the OBS formula itself: w - w_q H^-1 e_q / [H^-1]_qq
    hinv = torch.linalg.inv(h)
    torch.testing.assert_close(pruned, w - w[:, :1] * hinv[0][None, :] / hinv[0, 0], rtol=1e-9, atol=1e-9)


def test_sparsegpt_equals_sequential_obs_solved_directly_across_lazy_blocks():
    torch.manual_seed(1)
    x, w = torch.randn(200, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    stats = _stats(x)
    mask = torch.rand(4, 7, generator=torch.Generator().manual_seed(2)) > 0.5
    pruned, _ = sparsegpt(w, stats, mask=mask, block=3)  # blocks of 3, 3 and 1 columns
    # column by column: prune, then re-fit only the columns to the right (those to the left are final)
    h, ref = _damped(stats), w.clone()
    for j in range(7):
        for r in range(4):
            if not mask[r, j]:
                ref[r, j + 1:] += torch.linalg.solve(h[j + 1:, j + 1:], h[j + 1:, j]) * ref[r, j]
                ref[r, j] = 0
    torch.testing.assert_close(pruned, ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(("sparsity", "nm"), [(0.5, None), (None, (2, 4))])
def test_wanda_mask_equals_a_direct_numpy_computation(sparsity, nm):
    torch.manual_seed(3)
    layer = nn.Linear(8, 6)
    x = torch.randn(5, 10, 8)  # [batch, tokens, features]: every leading dimension is tokens
    w = layer.weight.detach().numpy().copy()
    masks, _ = prune_one_shot(layer, "wanda", [x], sparsity=sparsity, nm=nm)
    score = np.abs(w) * np.sqrt((x.reshape(-1, 8).double().numpy() ** 2).sum(axis=0))[None, :]
    if nm is None:
        expected = np.zeros_like(w, dtype=bool)
        for r, row in enumerate(score):
            expected[r, np.argsort(-row, kind="stable")[:4]] = True  # 4 of 8 kept per output row
    else:
        groups = score.reshape(-1, 4)
        expected = np.zeros_like(groups, dtype=bool)
        for g, group in enumerate(groups):
            expected[g, np.argsort(-group, kind="stable")[:2]] = True
        expected = expected.reshape(w.shape)
    np.testing.assert_array_equal(masks["weight"].numpy(), expected)
    np.testing.assert_array_equal(layer.weight.detach().numpy(), w * expected)  # Wanda does not update weights


def test_conv_patches_and_the_weight_matrix_reproduce_the_convolution():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)
    x = torch.randn(2, 3, 9, 9)
    out = layer_inputs(conv, x) @ weight_matrix(conv).T  # [patches, out]
    expected = conv(x).permute(0, 2, 3, 1).reshape(-1, 5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.depthwise(torch.relu(self.conv(x)))).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


def _correlated_batches(seed: int, count: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(count * 32, 1, 8, 8, generator=g)
    x = torch.cat([base, 0.8 * base + 0.2 * torch.randn(count * 32, 2, 8, 8, generator=g)], dim=1)  # correlated
    return list(x.split(32))


@pytest.mark.parametrize(("sparsity", "nm"), [(0.7, None), (None, (2, 4))])
def test_on_real_layers_the_reconstruction_error_orders_sparsegpt_below_wanda_below_magnitude(sparsity, nm):
    torch.manual_seed(5)
    dense, batches = _Net(), _correlated_batches(6)
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = _Net()
        model.load_state_dict(dense.state_dict())
        # each layer judged on the dense model's inputs, so the three errors are of the same quantity
        masks, report = prune_one_shot(model, method, batches, sparsity=sparsity, nm=nm, sequential=False)
        stats = collect_stats(dense, {"fc1": dense.fc1, "conv": dense.conv}, batches)
        errors[method] = {name: reconstruction_error(weight_matrix(getattr(dense, name)),
                                                     weight_matrix(getattr(model, name)), stats[name])
                          for name in ("conv", "fc1")}
        by_name = {r.name: r for r in report}
        assert by_name["depthwise"].method.startswith("magnitude" if method == "magnitude" else
                                                      "magnitude (a grouped convolution")
        if nm:  # the stem conv's 27 inputs hold no groups of 4: dense, and said so
            assert by_name["conv"].method == "dense (27 inputs: no groups of 4)" and by_name["conv"].density == 1
            masks = {k: v for k, v in masks.items() if k != "conv.weight"}
        kept = float(torch.cat([m.flatten() for m in masks.values()]).float().mean())
        assert kept == pytest.approx(0.3 if sparsity else 0.5, abs=0.02)
    for name in ("conv", "fc1") if sparsity else ("fc1",):
        assert errors["sparsegpt"][name] < errors["wanda"][name] < errors["magnitude"][name], (name, errors)


def test_sequential_calibration_sees_the_pruned_layers_before():
    torch.manual_seed(7)
    model, batches = _Net(), _correlated_batches(8, 2)
    assert list(forward_order(model, batches[0])) == ["conv", "depthwise", "fc1", "fc2"]
    dense = _Net()
    dense.load_state_dict(model.state_dict())
    _, sequential = prune_one_shot(model, "sparsegpt", batches, sparsity=0.5)
    other = _Net()
    other.load_state_dict(dense.state_dict())
    _, parallel = prune_one_shot(other, "sparsegpt", batches, sparsity=0.5, sequential=False)
    assert sequential[0].error == pytest.approx(parallel[0].error)  # the first layer sees the same inputs
    assert sequential[2].error != pytest.approx(parallel[2].error)  # fc1's inputs come from pruned layers
    with pytest.raises(ValueError, match="either a sparsity or an N:M pattern"):
        prune_one_shot(model, "wanda", batches)
