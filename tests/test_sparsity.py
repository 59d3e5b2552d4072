"""Sparsity accounting and fixed masks, checked against hand counts and torch.nn.utils.prune."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from transferbench.models import create_model
from transferbench.sparsity import (
    SparsityReport,
    apply_masks,
    check_masks,
    masks_from_zeros,
    measure_sparsity,
    prunable_weights,
)


class HandCounted(nn.Module):
    """conv (8 weights, 3 zeros) + BN + fc head (12 weights, 5 zeros; its bias is all zeros, never counted)."""

    head_name = "fc"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2, bias=True)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 1, 2, 0, 3, 0, 4, 5]).reshape(2, 1, 2, 2))
            self.conv.bias.zero_()
            self.bn.weight.zero_()
            self.fc.weight.copy_(torch.tensor([0.0, 1, 0, 2, 3, 0, 4, 0, 5, 6, 7, 0]).reshape(3, 4))
            self.fc.bias.zero_()


def test_prunable_weights_are_conv_and_linear_weights_only():
    model = HandCounted()
    assert list(prunable_weights(model)) == ["conv.weight", "fc.weight"]
    assert list(prunable_weights(model, include_head=False)) == ["conv.weight"]
    assert prunable_weights(model)["conv.weight"] is model.conv.weight


def test_measure_sparsity_matches_hand_counts():
    model = HandCounted()
    report = measure_sparsity(model)
    assert isinstance(report, SparsityReport)
    assert report.per_layer == {
        "conv.weight": {"numel": 8, "zeros": 3, "sparsity": 3 / 8},
        "fc.weight": {"numel": 12, "zeros": 5, "sparsity": 5 / 12},
    }
    assert (report.total, report.zeros, report.overall) == (20, 8, 8 / 20)
    backbone = measure_sparsity(model, include_head=False)
    assert (backbone.total, backbone.zeros, backbone.overall) == (8, 3, 3 / 8)
    assert report.to_dict()["per_layer"]["fc.weight"]["zeros"] == 5
    assert report.to_dict()["overall"] == 0.4


def test_measure_sparsity_of_a_state_dict_equals_that_of_the_model():
    model = HandCounted()
    assert measure_sparsity(model.state_dict()) == measure_sparsity(model)
    assert measure_sparsity(model.state_dict(), include_head=False) == measure_sparsity(model, include_head=False)


def test_head_of_a_transfer_model_is_excluded_by_name():
    model = create_model("resnet_tiny", num_classes=4)
    names = list(prunable_weights(model, include_head=False))
    assert "fc.weight" not in names and "conv1.weight" in names and "layer2.0.downsample.0.weight" in names
    assert len(prunable_weights(model)) == len(names) + 1


def test_masks_from_zeros_agree_with_torch_prune_l1_unstructured():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=4)
    reference = create_model("resnet_tiny", num_classes=4)
    reference.load_state_dict(model.state_dict())
    amount = 0.6
    expected = {}
    for name, module in reference.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear) and name != "fc":
            prune.l1_unstructured(module, "weight", amount=amount)
            expected[f"{name}.weight"] = module.weight_mask.bool()
            prune.remove(module, "weight")
    # Same tensors zeroed by torch's pruning → our masks must be torch's masks.
    model.load_state_dict(reference.state_dict())
    masks = masks_from_zeros(model)
    assert set(masks) == set(expected)
    for name, mask in masks.items():
        assert mask.dtype == torch.bool
        assert torch.equal(mask, expected[name]), name
        assert int((~mask).sum()) == round(amount * mask.numel())
    report = measure_sparsity(model, include_head=False)
    assert report.zeros == sum(int((~m).sum()) for m in expected.values())


def test_apply_masks_restores_the_zeros_and_check_masks_counts_violations():
    torch.manual_seed(1)
    model = create_model("resnet_tiny", num_classes=4)
    generator = torch.Generator().manual_seed(2)
    masks = {name: torch.rand(w.shape, generator=generator) > 0.7 for name, w in prunable_weights(model).items()}
    apply_masks(model, masks)
    assert check_masks(model, masks) == 0
    kept = {name: w.detach().clone() for name, w in prunable_weights(model).items()}

    # An optimizer step moves every weight, pruned ones included.
    with torch.no_grad():
        for w in prunable_weights(model).values():
            w.add_(0.5)
    pruned_count = sum(int((~m).sum()) for m in masks.values())
    assert check_masks(model, masks) == pruned_count

    apply_masks(model, masks)
    assert check_masks(model, masks) == 0
    for name, w in prunable_weights(model).items():
        assert torch.equal(w[masks[name]], kept[name][masks[name]] + 0.5)
        assert (w[~masks[name]] == 0).all()


def test_apply_masks_rejects_unknown_names_and_wrong_shapes():
    model = create_model("resnet_tiny", num_classes=4)
    with pytest.raises(KeyError):
        apply_masks(model, {"nope.weight": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError):
        apply_masks(model, {"conv1.weight": torch.ones(3, dtype=torch.bool)})
