"""A tiny CIFAR-style ResNet for tests and CPU demos; torchvision-like names, any input size."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from .base import TransferModel
from .registry import register_model

WIDTHS = (8, 16, 32)


def _stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
        )
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride=stride, downsample=downsample))


@register_model("resnet_tiny")
class ResNetTiny(TransferModel):
    """3×3 stem (stride 2) + 3×3/2 max-pool, then one BasicBlock per stage at widths 8/16/32.

    The stride-4 stem keeps 224 px inputs cheap on two CPU cores (the first stage runs at 56×56), while
    64 px inputs still leave a 4×4 map for the last stage. The adaptive pool accepts any input size.
    """

    feature_dim = WIDTHS[-1]

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(WIDTHS[0], WIDTHS[0], 1)
        self.layer2 = _stage(WIDTHS[0], WIDTHS[1], 2)
        self.layer3 = _stage(WIDTHS[1], WIDTHS[2], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        # torchvision's ResNet init: with PyTorch's default conv init the activations shrink several-fold per
        # layer, so a freshly built (untrained) tiny net would give near-constant features in demos and tests.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)
