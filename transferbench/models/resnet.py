"""ResNet-50 v1.5 with torchvision's exact parameter names, and its STR variant (1×1-conv head)."""

from __future__ import annotations

import torch
from torchvision.models import resnet50 as torchvision_resnet50

from .base import TransferModel, make_head
from .registry import register_model


@register_model("resnet50")
class ResNet50(TransferModel):
    """torchvision's ResNet-50 (stride on the 3×3 conv) with its children adopted under the same names.

    Adopting torchvision's modules keeps the state-dict keys, their order and the initialisation identical to
    ``torchvision.models.resnet50``, so torchvision (and IST-converted) weights load strictly. The pool is
    torchvision's adaptive average pool, which equals the paper's ``AvgPool2d(7)`` at 224 px.
    """

    feature_dim = 2048

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        reference = torchvision_resnet50(weights=None, num_classes=num_classes)
        for name, child in reference.named_children():
            self.add_module(name, child)
        if self.conv_head:
            self.fc = make_head(self.feature_dim, num_classes, conv_head=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


@register_model("resnet50_str")
class ResNet50STR(ResNet50):
    """STR's ResNet-50: same layers and names, classifier a bias-free 1×1 conv after AdaptiveAvgPool2d(1)."""

    conv_head = True
