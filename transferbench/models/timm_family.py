"""Any timm architecture as a TransferModel (``--arch vit_tiny_patch16_224``, ``convnext_atto``, ...).

``timm_class(name)`` makes (once) a TransferModel subclass for the timm model ``name``; the registry calls it for an
``--arch`` it does not know (``registry.model_class``), so the architectures of this project keep their names and
numbers and every timm name works besides. The wrapper holds the timm model's own submodules and parameters at its
top level, so its state dict is the timm model's (timm and PyTorch state dicts, and ``.safetensors`` files, load
unchanged); its methods run the timm model's:

- ``forward_features``: the pre-logits features (timm's ``forward_head(..., pre_logits=True)``: pooled, with the
  model's final norm), what a linear probe trains on;
- the head is timm's classifier (``get_classifier()``: ``head`` for ViT/DeiT, ``head.fc`` for ConvNeXt,
  ``classifier`` for EfficientNet), replaced by ``reset_classifier`` for full fine-tuning;
- the preprocessing is timm's pretrained config of the model (``resolve_model_data_config``): interpolation,
  mean/std and crop fraction, class attributes the transforms read and records keep;
- vision transformers are built with ``dynamic_img_size=True``: identical at their native resolution, and the
  position embeddings are interpolated at another (the mini-tasks' 32 px).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from ..errors import TransferbenchError
from .base import TransferModel

_DYNAMIC_SIZE = ("vit_", "deit_", "eva", "beit")  # families whose position embeddings need the size at build time


def timm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("timm") is not None


def _build_timm(name: str, num_classes: int) -> nn.Module:
    import timm

    kwargs = {"dynamic_img_size": True} if name.startswith(_DYNAMIC_SIZE) else {}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


class TimmModel(TransferModel):
    """A timm model's modules under this TransferModel (module docstring). Subclasses set ``timm_name``."""

    timm_name: str = ""
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._adopt(_build_timm(self.timm_name, num_classes))

    def _adopt(self, net: nn.Module) -> None:
        """Register ``net``'s children, parameters and buffers as this module's own (same objects): the state dict
        is timm's, and ``net``'s methods see every change."""
        object.__setattr__(self, "_net", net)  # not a submodule: its parts are registered below
        for name, child in net.named_children():
            setattr(self, name, child)
        for name, param in net.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in net.named_buffers(recurse=False):
            self.register_buffer(name, buffer)

    def preprocessing(self) -> dict:
        """timm's pretrained config of the model, as ``transforms.protocol_transform`` takes it."""
        from ..tasks.spec import Normalization

        return {"model_normalization": Normalization(self.mean, self.std), "crop_pct": self.crop_pct}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._net.forward_head(self._net.forward_features(x), pre_logits=True)

    def head_module(self) -> nn.Module:
        return self._net.get_classifier()

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self._net.get_classifier()(feats)

    def reset_head(self, num_classes: int) -> nn.Module:
        reference = next(self.parameters())
        self._net.reset_classifier(num_classes)
        for name, child in self._net.named_children():  # a replaced head is a new child of the timm model
            setattr(self, name, child)
        head = self._net.get_classifier().to(reference.device, reference.dtype)
        return head


@cache
def timm_class(name: str) -> type[TimmModel]:
    """The TransferModel subclass of the timm model ``name`` (its class attributes read from a meta-device
    instance and timm's pretrained config); a one-line error when timm is missing or does not know ``name``."""
    if not timm_available():
        raise TransferbenchError(f"unknown architecture '{name}' (--arch), and timm, which may know it, is not "
                                 "installed: pip install timm")
    import timm

    if not timm.is_model(name):
        raise TransferbenchError(f"unknown architecture '{name}' (--arch): neither transferbench's (transferbench "
                                 "checkpoints list) nor timm's (timm.list_models())")
    with torch.device("meta"):
        net = _build_timm(name, 1000)
    config = timm.data.resolve_model_data_config(net)
    classifier = net.get_classifier()
    head_name = next(n for n, module in net.named_modules() if module is classifier)
    attributes = {
        "timm_name": name, "head_name": head_name, "feature_dim": int(getattr(net, "head_hidden_size", None)
                                                                        or net.num_features),
        "interpolation": config["interpolation"] if config["interpolation"] in ("bilinear", "bicubic") else "bicubic",
        "crop_pct": float(config.get("crop_pct", 0.875)), "mean": tuple(config["mean"]), "std": tuple(config["std"]),
        "input_size": int(config["input_size"][-1]),
    }
    cls = type(f"Timm_{name.replace('.', '_')}", (TimmModel,), attributes)
    cls.arch = name
    return cls
