"""Sparsity accounting and fixed masks, checked against hand counts and torch.nn.utils.prune."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from transferbench.errors import TransferbenchError
from transferbench.models import create_model
from transferbench.sparsity import (
    SparsityReport,
    SparsityRule,
    apply_masks,
    check_masks,
    masks_from_zeros,
    measure_sparsity,
    prunable_set,
    prunable_set_names,
    prunable_weights,
    set_weights,
    sparsity_rule,
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


# --- prunable sets and sparsity rules (sparsity_rules.yaml; pruning_methods.md §0.1, §4.2, §7) --------------------


def test_prunable_sets_select_the_weights_each_method_prunes():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=7)
    everything = prunable_weights(model)
    assert set_weights(model, "all_conv_fc").keys() == everything.keys()
    lth = set_weights(model, "conv_except_first")
    assert lth.keys() == everything.keys() - {"conv1.weight", "fc.weight"}  # LTH-T: stem and head dense
    assert all(lth[name] is weight for name, weight in everything.items() if name in lth)  # the parameters
    for name in ("all_conv_fc", "conv_except_first"):  # a state dict is read the same way
        assert set_weights(model.state_dict(), name).keys() == set_weights(model, name).keys()
    with torch.device("meta"):  # STR: the head is a 1×1 conv, pruned by STR, kept dense by conv_except_first
        str_model = create_model("mobilenet_str")
    assert "fc.weight" in set_weights(str_model, "all_conv_fc")
    assert not {"fc.weight", "model.0.0.weight"} & set(set_weights(str_model, "conv_except_first"))
    with pytest.raises(TransferbenchError, match=r"unknown prunable set 'convs'.*all_conv_fc"):
        set_weights(model, "convs")


def test_resnet50_counts_and_what_an_authentic_lth_t_ticket_measures_over_all_weights():
    with torch.device("meta"):
        model = create_model("resnet50")
    count = {name: sum(w.numel() for w in set_weights(model, name).values())
             for name in ("all_conv_fc", "conv_except_first")}
    assert count == {"all_conv_fc": 25_502_912, "conv_except_first": 25_502_912 - 9_408 - 2_048_000}  # §0.1
    rule = sparsity_rule("lth_t")
    grid = [rule.expected(s) for s in (0.8, 0.9, 0.95)]
    assert grid == [pytest.approx(1 - 0.8**r) for r in (7, 10, 13)]
    # the figures: such tickets measure 72.7 / 82.1 / 86.9% over every Conv/Linear weight
    over_all = [round(100 * g * count["conv_except_first"] / count["all_conv_fc"], 1) for g in grid]
    assert over_all == [72.7, 82.1, 86.9]


def test_sparsity_rules_by_method():
    lth = sparsity_rule("lth_t")
    assert (lth.prunable, lth.kind, lth.rate) == ("conv_except_first", "rounds", 0.2) and sparsity_rule("lth") == lth
    assert lth.expected(0.9) == pytest.approx(0.8926258176) and lth.allowed_gap(0.005) == 0.005
    str_rule = sparsity_rule("str")
    assert (str_rule.prunable, str_rule.kind, str_rule.expected(0.8)) == ("all_conv_fc", "learned", 0.8)
    assert str_rule.allowed_gap(0.005) == 0.015 and str_rule.allowed_gap(0.2) == 0.2
    for method in ("acdc", "rigl_erk5x", "woodfisher", "gmp", "cram", "dense", "custom", None):
        assert sparsity_rule(method) == SparsityRule("all_conv_fc", "nominal"), method
    assert sparsity_rule("acdc", "conv_except_first").prunable == "conv_except_first"  # a row's own set
    with pytest.raises(TransferbenchError, match="unknown prunable set"):
        sparsity_rule("acdc", "convs")
    assert set(prunable_set_names()) == {"all_conv_fc", "conv_except_first", "conv_fc_except_first_and_head",
                                         "transformer_blocks"}
    for method in ("wanda", "wanda_nm", "sparsegpt", "sparsegpt_nm"):  # one-shot post-training: layer-wise
        assert sparsity_rule(method) == SparsityRule("conv_fc_except_first_and_head", "nominal"), method
    assert prunable_set("conv_except_first").description


def test_measure_sparsity_over_a_prunable_set():
    torch.manual_seed(1)
    model = create_model("resnet_tiny", num_classes=7)
    with torch.no_grad():
        model.conv1.weight.view(-1)[:100] = 0.0  # outside the LTH-T set
        model.layer1[0].conv1.weight.view(-1)[:50] = 0.0
    lth = measure_sparsity(model, prunable="conv_except_first")
    assert lth.zeros == 50 and "conv1.weight" not in lth.per_layer
    assert lth.total == sum(w.numel() for w in set_weights(model, "conv_except_first").values())
    assert measure_sparsity(model).zeros == 150
    assert measure_sparsity(model.state_dict(), prunable="conv_except_first") == lth
