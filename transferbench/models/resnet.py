"""torchvision's ResNets with their exact parameter names: ResNet-50 v1.5 (and its STR variant, a 1×1-conv head)
and ResNet-18 (the CelebA bias study's, bias_analysis.md §1.2)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18 as torchvision_resnet18
from torchvision.models import resnet50 as torchvision_resnet50

from .base import TransferModel, make_head
from .registry import register_model


class TorchvisionResNet(TransferModel):
    """A torchvision ResNet (``torchvision_builder``) with its children adopted under the same names.

    Adopting torchvision's modules keeps the state-dict keys, their order and the initialisation identical to
    torchvision's model, so torchvision (and IST-converted) weights load strictly. The pool is torchvision's
    adaptive average pool, which equals the papers' ``AvgPool2d(7)`` at 224 px.
    """

    @staticmethod
    def torchvision_builder(num_classes: int) -> nn.Module:
        raise NotImplementedError

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        reference = self.torchvision_builder(num_classes)
        for name, child in reference.named_children():
            self.add_module(name, child)
        if self.conv_head:
            self.fc = make_head(self.feature_dim, num_classes, conv_head=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


@register_model("resnet50")
class ResNet50(TorchvisionResNet):
    """torchvision's ResNet-50 (v1.5: the stride on the 3×3 conv)."""

    feature_dim = 2048

    @staticmethod
    def torchvision_builder(num_classes: int) -> nn.Module:
        return torchvision_resnet50(weights=None, num_classes=num_classes)


@register_model("resnet18")
class ResNet18(TorchvisionResNet):
    """torchvision's ResNet-18 (basic blocks, 512-d features): the CelebA bias study's ResNet18.

    The study's run scripts pass ``--arch=resnet18`` (IST-DASLab's ImageNet ResNet-18, torchvision's layout): its
    pruner configs list exactly torchvision's 20 convs and ``fc`` by these names. Its ``models/resnet_celeba.py``
    (an extra 512→2048 ``prefc`` layer) is ``celeba_resnet18``, which no run script names.
    """

    feature_dim = 512

    @staticmethod
    def torchvision_builder(num_classes: int) -> nn.Module:
        return torchvision_resnet18(weights=None, num_classes=num_classes)


@register_model("resnet50_str")
class ResNet50STR(ResNet50):
    """STR's ResNet-50: same layers and names, classifier a bias-free 1×1 conv after AdaptiveAvgPool2d(1)."""

    conv_head = True
