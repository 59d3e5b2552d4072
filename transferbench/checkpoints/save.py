"""Writing checkpoints in the project's format: the IST-DASLab container the paper's code reads, plus metadata.

``{'model_config': {'arch', 'dataset'}, 'model_state_dict': <wrapped state dict>, 'metadata': {...}}`` where
every masked layer stores ``<layer>._layer.weight`` and ``<layer>._weight_mask`` (and ``_layer.bias`` /
``_bias_mask``), so the file loads here with its masks (formats.py) and in the paper's own code unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import torch_save
from ..digests import sha256_file


def wrapped_state_dict(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in model.state_dict().items():
        layer, _, leaf = name.rpartition(".")
        if name in masks:
            keep = masks[name].to(device=tensor.device, dtype=tensor.dtype)
            state[f"{layer}._layer.weight"] = (tensor * keep).cpu()
            state[f"{layer}._weight_mask"] = keep.cpu()
        elif leaf == "bias" and f"{layer}.weight" in masks:
            state[f"{layer}._layer.bias"] = tensor.cpu()
            state[f"{layer}._bias_mask"] = torch.ones_like(tensor).cpu()
        else:
            state[name] = tensor.cpu()
    return state


def save_checkpoint(path: str | os.PathLike, model: nn.Module, masks: dict[str, torch.Tensor], arch: str,
                    dataset: str, metadata: dict[str, Any]) -> str:
    """Write atomically; returns the file's sha256. ``metadata`` must hold only str/int/float/bool/list/dict."""
    blob = {"model_config": {"arch": arch, "dataset": dataset},
            "model_state_dict": wrapped_state_dict(model, masks),
            "metadata": metadata}
    torch_save(Path(path), blob)
    return sha256_file(path)
