"""Mask-preserving full fine-tuning, checked on a tiny model and in-memory data."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import transferbench.finetune.full as full
from transferbench.models import create_model
from transferbench.runspec import resolve_hparams
from transferbench.sparsity import measure_sparsity, prunable_weights


def _model_and_masks(sparsity=0.7, seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet_tiny", num_classes=1000)
    masks = {}
    for name, w in prunable_weights(model, include_head=False).items():
        k = int(sparsity * w.numel())
        threshold = w.detach().abs().flatten().kthvalue(k).values
        masks[name] = w.detach().abs() > threshold
    model.reset_head(5)
    return model, masks


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 5
    x = torch.randn(n, 3, 32, 32, generator=g) + y.view(-1, 1, 1, 1).float()
    return TensorDataset(x, y)


def test_pruned_weights_stay_zero_and_the_new_head_is_dense(tmp_path):
    model, masks = _model_and_masks()
    bn_before = model.bn1.running_mean.clone()
    hp = resolve_hparams("full", 0.001, {"epochs": 2, "lr": 0.1, "batch_size": 8})
    result = full.finetune_full(model, masks, _data(), _data(20, seed=1), 5, hp, seed=0, work_dir=tmp_path,
                                device=torch.device("cpu"))
    weights = prunable_weights(model, include_head=False)
    for name, mask in masks.items():
        assert torch.all(weights[name][~mask] == 0), name
        assert torch.all(weights[name][mask] != 0), name  # surviving weights were trained, none died
    assert result.sparsity_before == result.sparsity_after
    assert result.sparsity_after["overall"] == pytest.approx(0.7, abs=0.01)
    assert torch.count_nonzero(model.fc.weight) == model.fc.weight.numel()  # dense head
    assert not torch.equal(model.bn1.running_mean, bn_before)  # BN trains (pitfall P6)
    assert len(result.curve) == 2 and result.resumed_from_epoch == 0


def test_without_remasking_momentum_and_weight_decay_revive_pruned_weights(tmp_path, monkeypatch):
    """The control for the test above: the re-masking after each step is what keeps the zeros."""
    model, masks = _model_and_masks()
    original_apply = full.FixedMasks.apply
    calls = []

    def apply_once(self):  # only the initial application, none after the optimizer steps
        if not calls:
            calls.append(True)
            original_apply(self)

    monkeypatch.setattr(full.FixedMasks, "apply", apply_once)
    hp = resolve_hparams("full", 0.001, {"epochs": 1, "lr": 0.1, "batch_size": 8})
    with pytest.raises(RuntimeError, match="mask violated"):  # and the runner's final check notices
        full.finetune_full(model, masks, _data(), _data(20, seed=1), 5, hp, seed=0, work_dir=tmp_path,
                           device=torch.device("cpu"))
    assert measure_sparsity(model, include_head=False).overall < 0.7 - 0.5
