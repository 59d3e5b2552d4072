"""Backbones for transfer: a timm-like registry of the upstream architectures (transfer_protocol.md §3-5).

Importing this package registers every family; ``create_model(arch, num_classes)`` builds one.
"""

from . import mobilenet, resnet, rigl, tiny  # noqa: F401  (importing a family registers its archs)
from .base import TransferModel, make_head
from .registry import create_model, list_archs, model_class, register_model

__all__ = ["TransferModel", "create_model", "list_archs", "make_head", "model_class", "register_model"]
