"""The architecture registry: shapes, parameter names of each upstream layout, heads and interpolation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from transferbench.errors import TransferbenchError
from transferbench.models import TransferModel, create_model, list_archs, model_class, register_model
from transferbench.models import registry as model_registry

ALL_ARCHS = ["mobilenet", "mobilenet_str", "resnet18", "resnet50", "resnet50_rigl", "resnet50_str", "resnet_tiny"]
FEATURE_DIMS = {"mobilenet": 1024, "mobilenet_str": 1024, "resnet18": 512, "resnet50": 2048, "resnet50_rigl": 2048,
                "resnet50_str": 2048, "resnet_tiny": 32}
STR_ARCHS = ["resnet50_str", "mobilenet_str"]


@pytest.fixture(scope="module")
def built() -> dict[str, TransferModel]:
    """One 10-way instance per arch, in eval mode, shared by the tests of this module."""
    return {arch: create_model(arch, num_classes=10).eval() for arch in ALL_ARCHS}


def test_registry_lists_every_arch():
    assert list_archs() == sorted(ALL_ARCHS)


def test_unknown_arch_is_a_one_line_error_listing_the_known_ones():
    with pytest.raises(TransferbenchError) as err:
        create_model("resnet51")
    assert "resnet51" in str(err.value) and "resnet50_rigl" in str(err.value) and "\n" not in str(err.value)


def _input_side(arch: str) -> int:
    # MobileNet's AvgPool2d(7) needs 224 px; the ResNets pool adaptively, so a small input keeps tests fast.
    return 224 if arch.startswith("mobilenet") else 64


@torch.no_grad()
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_forward_shapes_and_feature_dim(built, arch):
    model = built[arch]
    side = _input_side(arch)
    x = torch.randn(2, 3, side, side)
    feats = model.forward_features(x)
    assert model.feature_dim == FEATURE_DIMS[arch]
    assert feats.shape == (2, FEATURE_DIMS[arch])
    logits = model(x)
    assert logits.shape == (2, 10)
    assert torch.allclose(logits, model.forward_head(feats))
    assert model.arch == arch and model.head_name == "fc" and model.num_classes == 10


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_interpolation_flag(arch):
    # RigL was trained in TensorFlow with bicubic resizing (pitfall P9); everything else is bilinear.
    expected = "bicubic" if arch == "resnet50_rigl" else "bilinear"
    assert model_class(arch).interpolation == expected


def test_resnet50_matches_torchvision_keys_shapes_and_outputs(built):
    reference = torchvision.models.resnet50()
    ours = create_model("resnet50")
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    assert all(our_state[k].shape == ref_state[k].shape for k in ref_state)
    ours.load_state_dict(ref_state, strict=True)  # torchvision weights load as they are
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), reference.eval()(x))
    # v1.5: the stride sits on the 3×3 conv.
    assert ours.layer2[0].conv2.stride == (2, 2) and ours.layer2[0].conv1.stride == (1, 1)


def test_resnet50_str_has_torchvision_names_and_a_bias_free_conv_head(built):
    model = built["resnet50_str"]
    torchvision_keys = set(torchvision.models.resnet50().state_dict())
    assert set(model.state_dict()) == torchvision_keys - {"fc.bias"}
    assert isinstance(model.fc, nn.Conv2d) and model.fc.bias is None
    assert model.fc.weight.shape == (10, 2048, 1, 1)
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)


def test_rigl_tf_port_names(built):
    model = built["resnet50_rigl"]
    keys = set(model.state_dict())
    for key in [
        "initial_conv.conv.weight", "initial_conv.bn.running_var",
        "layer1.block.0.shortcut.conv.weight", "layer1.block.0.shortcut.bn.weight",
        "layer2.block.3.conv2.conv.weight", "layer3.block.5.conv1.bn.bias", "layer4.block.2.conv3.conv.weight",
        "fc.weight", "fc.bias",
    ]:
        assert key in keys, key
    assert not any(k.startswith(("conv1.", "bn1.")) or ".downsample." in k for k in keys)
    shortcuts = {k.split(".shortcut.")[0] for k in keys if ".shortcut." in k}
    assert shortcuts == {f"layer{i}.block.0" for i in range(1, 5)}
    assert len(keys) == len(torchvision.models.resnet50().state_dict())
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bn.eps == 1e-5 and bn.momentum == 0.1
    # Stride on the 3×3 conv (padding 1), projection shortcut strided too.
    block = model.layer2.block[0]
    assert block.conv2.conv.stride == (2, 2) and block.conv2.conv.padding == (1, 1)
    assert block.conv1.conv.stride == (1, 1) and block.shortcut.conv.stride == (2, 2)


def test_rigl_stem_emulates_tf_same_pooling(built):
    model = built["resnet50_rigl"]
    assert model.initial_conv.conv.kernel_size == (7, 7) and model.initial_conv.conv.padding == (3, 3)
    assert model.pad.padding == (0, 1, 0, 1) and model.initial_max_pool.padding == 0
    with torch.no_grad():
        stem = model.initial_conv(torch.randn(1, 3, 224, 224))
        padded = model.pad(stem)
        pooled = model.initial_max_pool(padded)
    assert stem.shape[-2:] == (112, 112) and padded.shape[-2:] == (113, 113) and pooled.shape[-2:] == (56, 56)
    # TF "SAME" pooling pads only bottom/right and ignores the padding (-inf); after a ReLU, 0 is equivalent.
    tf_same = F.max_pool2d(F.pad(stem, (0, 1, 0, 1), value=float("-inf")), 3, stride=2)
    assert torch.equal(pooled, tf_same)


def test_mobilenet_distiller_layout(built):
    model = built["mobilenet"]
    blocks, pool = list(model.model)[:-1], model.model[-1]
    assert len(blocks) == 14 and isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 7
    assert all(k.startswith(("model.", "fc.")) for k in model.state_dict())
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("model.")} == {str(i) for i in range(14)}
    stem = blocks[0][0]
    assert (stem.in_channels, stem.out_channels, stem.stride) == (3, 32, (2, 2))
    expected = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
                *[(512, 512, 1)] * 5, (512, 1024, 2), (1024, 1024, 1)]
    for block, (cin, cout, stride) in zip(blocks[1:], expected, strict=True):
        assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2
        depthwise, pointwise = block[0], block[3]
        assert depthwise.groups == cin and depthwise.kernel_size == (3, 3) and depthwise.stride == (stride, stride)
        assert (pointwise.in_channels, pointwise.out_channels, pointwise.kernel_size) == (cin, cout, (1, 1))
    assert all(m.bias is None for m in model.model.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 1024
    assert "model.13.3.weight" in model.state_dict() and "model.0.0.weight" in model.state_dict()


def test_mobilenet_refuses_inputs_other_than_224(built):
    with pytest.raises(TransferbenchError, match="224"), torch.no_grad():
        built["mobilenet"].forward_features(torch.randn(1, 3, 256, 256))


def test_mobilenet_str_uses_the_same_layout_with_a_conv_head(built):
    plain, str_model = built["mobilenet"], built["mobilenet_str"]
    assert set(str_model.state_dict()) == set(plain.state_dict()) - {"fc.bias"}
    assert isinstance(str_model.fc, nn.Conv2d) and str_model.fc.bias is None


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_reset_head_gives_a_fresh_head_of_the_right_kind(built, arch):
    model = built[arch]
    old_head = model.fc
    head = model.reset_head(37)
    model.fc = old_head  # leave the shared instance as other tests expect it
    assert head is not old_head
    d = FEATURE_DIMS[arch]
    model.fc = head
    try:
        assert model.num_classes == 37
        with torch.no_grad():
            assert model.forward_head(torch.randn(2, d)).shape == (2, 37)
    finally:
        model.fc = old_head
    if arch in STR_ARCHS:
        # Bias-free 1×1 conv, Kaiming-normal (fan_in, ReLU): std = sqrt(2 / fan_in).
        assert isinstance(head, nn.Conv2d) and head.bias is None and head.weight.shape == (37, d, 1, 1)
        assert abs(head.weight.std().item() / math.sqrt(2 / d) - 1) < 0.1
    else:
        # PyTorch's default Linear init: uniform within ±1/sqrt(fan_in).
        assert isinstance(head, nn.Linear) and head.bias is not None and head.weight.shape == (37, d)
        assert head.weight.abs().max() <= 1 / math.sqrt(d)


def test_resnet_tiny_accepts_small_and_large_inputs():
    model = create_model("resnet_tiny", num_classes=3).eval()
    with torch.no_grad():
        for side in (64, 96, 224):
            assert model(torch.randn(2, 3, side, side)).shape == (2, 3)
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.weight", "layer3.0.conv2.weight", "layer2.0.downsample.0.weight"} <= keys
    assert not any(k.startswith("layer4") for k in keys)


def test_register_model_adds_an_arch(monkeypatch):
    monkeypatch.setattr(model_registry, "_REGISTRY", dict(model_registry._REGISTRY))

    @register_model("test_linear_probe")
    class Probe(TransferModel):
        feature_dim = 3

        def __init__(self, num_classes: int = 1000):
            super().__init__()
            self.fc = nn.Linear(3, num_classes)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    model = create_model("test_linear_probe", num_classes=4)
    assert isinstance(model, Probe) and model.arch == "test_linear_probe"
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(TypeError):
        register_model("not_a_model")(object)
