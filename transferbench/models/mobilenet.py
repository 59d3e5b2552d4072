"""MobileNetV1 in Distiller's layout (``model.N.M`` keys) as used for the paper's MobileNet checkpoints."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TransferbenchError
from .base import TransferModel, make_head
from .registry import register_model

# (in, out, stride) of the 13 depthwise-separable blocks that follow the 3→32 stride-2 stem.
_SEPARABLE_BLOCKS = (
    (32, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    *((512, 512, 1),) * 5,
    (512, 1024, 2),
    (1024, 1024, 1),
)
# The final AvgPool2d(7) is exact global pooling only on a 7×7 map, i.e. for 224×224 inputs.
_FINAL_MAP = 7


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


def _separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Depthwise 3×3 (groups=in) + BN + ReLU, then pointwise 1×1 + BN + ReLU: indices 0..5 of the block."""
    return nn.Sequential(
        *_conv_bn_relu(in_ch, in_ch, 3, stride, groups=in_ch),
        *_conv_bn_relu(in_ch, out_ch, 1, 1),
    )


@register_model("mobilenet")
class MobileNetV1(TransferModel):
    """``model`` = Sequential(stem, 13 separable blocks, AvgPool2d(7)); ``fc`` = Linear(1024, C).

    Features are the output of ``model`` flattened (1024-d). Because of ``AvgPool2d(7)``, inputs must be
    224×224; any other size is refused rather than silently pooling a corner of the map.
    """

    feature_dim = 1024

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        blocks = [nn.Sequential(*_conv_bn_relu(3, 32, 3, 2))]
        blocks += [_separable(i, o, s) for i, o, s in _SEPARABLE_BLOCKS]
        self.model = nn.Sequential(*blocks, nn.AvgPool2d(_FINAL_MAP))
        self.fc = make_head(self.feature_dim, num_classes, self.conv_head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        *blocks, pool = self.model
        for block in blocks:
            x = block(x)
        if x.shape[-2:] != (_FINAL_MAP, _FINAL_MAP):
            raise TransferbenchError(
                f"{self.arch} needs 224×224 inputs: its AvgPool2d(7) expects a 7×7 final map, got "
                f"{x.shape[-2]}×{x.shape[-1]}; use image_size=224"
            )
        return torch.flatten(pool(x), 1)


@register_model("mobilenet_str")
class MobileNetV1STR(MobileNetV1):
    """STR's MobileNetV1: same ``model.*`` layout, bias-free 1×1-conv classifier."""

    conv_head = True
