"""The interface every backbone offers the transfer code: pooled features, a replaceable head, and metadata."""

from __future__ import annotations

import torch
from torch import nn


def make_head(feature_dim: int, num_classes: int, conv_head: bool) -> nn.Module:
    """A freshly initialised C-way head (protocol §4 / pitfall P8).

    The STR architectures were trained with a bias-free 1×1 conv as classifier, Kaiming-normal (fan_in, ReLU)
    initialised by STR's builder; every other architecture gets ``nn.Linear`` with PyTorch's default init.
    """
    if conv_head:
        head = nn.Conv2d(feature_dim, num_classes, kernel_size=1, bias=False)
        nn.init.kaiming_normal_(head.weight, mode="fan_in", nonlinearity="relu")
        return head
    return nn.Linear(feature_dim, num_classes)


class TransferModel(nn.Module):
    """A classification backbone whose head sits in the submodule named ``head_name``.

    Subclasses create their layers in ``__init__`` (with the head as ``self.<head_name>``) and implement
    ``forward_features``. The class attributes describe the model without building it (the checkpoint
    loader reads ``head_name`` to size the head from the file before construction).
    """

    arch: str = ""
    feature_dim: int = 0
    head_name: str = "fc"
    # Resize/crop interpolation the upstream model was trained with (RigL: TF bicubic, pitfall P9).
    interpolation: str = "bilinear"
    # The resolution the upstream weights expect (a timm model's pretrained config: 384 for *_384 models); the
    # protocol's 224 for this project's architectures.
    input_size: int = 224
    # True for the STR architectures, whose classifier is a bias-free 1×1 conv over the [N, D, 1, 1] pool.
    conv_head: bool = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, shape [N, feature_dim]."""
        raise NotImplementedError

    def head_module(self) -> nn.Module:
        # A method, not a property: a property named like the head attribute would shadow the submodule.
        return getattr(self, self.head_name)

    @property
    def num_classes(self) -> int:
        head = self.head_module()
        return head.out_channels if isinstance(head, nn.Conv2d) else head.out_features

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        head = self.head_module()
        if self.conv_head:
            return head(feats[:, :, None, None]).flatten(1)
        return head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_classes: int) -> nn.Module:
        """Replace the head by a fresh ``num_classes``-way one on the backbone's device/dtype; returns it."""
        reference = next(self.parameters())
        head = make_head(self.feature_dim, num_classes, self.conv_head).to(reference.device, reference.dtype)
        setattr(self, self.head_name, head)
        return head
