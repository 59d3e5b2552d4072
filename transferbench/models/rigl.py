"""ResNet-50 as ported from RigL's TensorFlow checkpoints (different names, TF "SAME" max-pool padding)."""

from __future__ import annotations

import torch
from torch import nn

from .base import TransferModel
from .registry import register_model

# BatchNorm eps 1e-5 and momentum 0.1, as the paper's port (transfer_protocol.md §5; PyTorch's defaults).
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1


class ConvBN(nn.Module):
    """Conv (no bias) + BN, optionally followed by ReLU; parameters live under ``conv`` and ``bn``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, padding: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class TFBottleneck(nn.Module):
    """1×1 → 3×3 (carries the stride, padding 1) → 1×1 ×4, with a projection shortcut on the first block."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, projection: bool):
        super().__init__()
        out_ch = width * self.expansion
        if projection:
            self.shortcut = ConvBN(in_ch, out_ch, 1, stride=stride, padding=0, relu=False)
        self.conv1 = ConvBN(in_ch, width, 1, stride=1, padding=0, relu=True)
        self.conv2 = ConvBN(width, width, 3, stride=stride, padding=1, relu=True)
        self.conv3 = ConvBN(width, out_ch, 1, stride=1, padding=0, relu=False)
        self.relu = nn.ReLU(inplace=True)
        self.projection = projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x) if self.projection else x
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class TFStage(nn.Module):
    """One ResNet stage; its blocks sit under ``block`` as in the port (``layerK.block.I...``)."""

    def __init__(self, in_ch: int, width: int, num_blocks: int, stride: int):
        super().__init__()
        blocks = [TFBottleneck(in_ch, width, stride, projection=True)]
        blocks += [TFBottleneck(width * 4, width, 1, projection=False) for _ in range(num_blocks - 1)]
        self.block = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


@register_model("resnet50_rigl")
class ResNet50RigL(TransferModel):
    """RigL's ResNet-50, trained in TensorFlow: bicubic resizing (pitfall P9) and TF "SAME" pooling.

    After the 7×7/2 stem conv, TF's "SAME" 3×3/2 max-pool pads only bottom/right; ``ZeroPad2d((0, 1, 0, 1))``
    followed by an unpadded max-pool reproduces that (224 → 112 → 113 → 56). Zero padding is exact here
    because the pool follows a ReLU, so every input is ≥ 0.
    """

    feature_dim = 2048
    interpolation = "bicubic"

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.initial_conv = ConvBN(3, 64, 7, stride=2, padding=3, relu=True)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.initial_max_pool = nn.MaxPool2d(3, stride=2, padding=0)
        self.layer1 = TFStage(64, 64, 3, stride=1)
        self.layer2 = TFStage(256, 128, 4, stride=2)
        self.layer3 = TFStage(512, 256, 6, stride=2)
        self.layer4 = TFStage(1024, 512, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial_max_pool(self.pad(self.initial_conv(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)
