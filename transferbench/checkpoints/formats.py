"""Checkpoint format adapters: whatever a published file holds → a plain state dict plus its stored masks.

Formats (``LoadedCheckpoint.format``):

- ``plain``: a state dict, possibly nested under ``state_dict``/``model`` and/or with ``module.`` prefixes
  (torchvision, most training scripts).
- ``rigl``: a plain state dict with the TF-port names of RigL's ResNet-50 (``initial_conv.*``).
- ``torch_prune``: ``torch.nn.utils.prune`` leftovers, ``<layer>.weight_orig`` + ``<layer>.weight_mask``
  (LTH tickets); the effective weight is orig × mask.
- ``ist``: IST-DASLab's ``{'model_config': {'arch', 'dataset'}, 'model_state_dict'}`` container, whose
  wrapped layers store ``<layer>._layer.weight``, ``<layer>._weight_mask``, ``<layer>._layer.bias`` and
  ``<layer>._bias_mask`` (transfer_protocol.md §5).
- ``str``: STR training checkpoints, ``<layer>.weight`` + ``<layer>.sparseThreshold`` s; the effective weight
  is sign(W)·relu(|W| − sigmoid(s)) (pruning_methods.md §7).

Every encoding is decoded wherever it appears, so mixed files (a wrapped state dict without the container,
``module.`` prefixes inside the IST container) load too; the format label names the dominant one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import TransferbenchError

FORMATS = ("plain", "rigl", "torch_prune", "ist", "str", "efficientnet_pytorch")

# Containers that training scripts nest the state dict in, most specific first.
_NESTING_KEYS = ("model_state_dict", "state_dict", "model")
_DATA_PARALLEL_PREFIX = "module."

# Suffix → (what it encodes, tensor it belongs to). The IST wrapper's "._weight_mask" and torch.nn.utils.prune's
# ".weight_mask" never overlap; keys with none of these suffixes are plain parameter/buffer names.
_ENCODED_SUFFIXES = (
    ("._layer.weight", "value", "weight"),
    ("._layer.bias", "value", "bias"),
    ("._weight_mask", "mask", "weight"),
    ("._bias_mask", "mask", "bias"),
    (".weight_orig", "value", "weight"),
    (".bias_orig", "value", "bias"),
    (".weight_mask", "mask", "weight"),
    (".bias_mask", "mask", "bias"),
    (".sparseThreshold", "threshold", "weight"),
)


@dataclass
class DecodedCheckpoint:
    """A checkpoint reduced to model-ready tensors."""

    state: dict[str, torch.Tensor]  # plain parameter/buffer names → effective tensors (masks applied)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # weight name → stored bool mask
    format: str = "plain"
    config: dict[str, Any] | None = None  # the IST container's model_config, when present

    @property
    def config_arch(self) -> str | None:
        arch = (self.config or {}).get("arch")
        return str(arch) if arch else None


def _unnest(obj: Any, origin: str) -> tuple[Mapping[str, Any], dict[str, Any] | None, bool]:
    """Find the state dict inside ``obj``: (state dict, model_config or None, whether it was an IST container)."""
    if not isinstance(obj, Mapping):
        raise TransferbenchError(
            f"unknown checkpoint format in {origin}: it holds a {type(obj).__name__}, not a state dict; "
            f"save model.state_dict() with torch.save"
        )
    config = None
    is_ist = "model_state_dict" in obj
    if isinstance(obj.get("model_config"), Mapping):
        config = dict(obj["model_config"])
    # Descend into nested containers ({'state_dict': {...}}, {'model': {...}}). A state dict's own values are
    # tensors, so a mapping under one of these keys is always a container (training checkpoints also keep
    # tensors such as best_acc1 next to it, so the presence of tensors alone does not end the descent).
    for _ in range(3):
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise TransferbenchError(
            f"unknown checkpoint format in {origin}: no tensors found (top-level keys: "
            f"{', '.join(map(str, list(obj)[:8]))}); expected a state dict or an IST "
            f"{{'model_config', 'model_state_dict'}} checkpoint"
        )
    return tensors, config, is_ist


def _strip_data_parallel(state: Mapping[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    stripped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        while name.startswith(_DATA_PARALLEL_PREFIX):
            name = name[len(_DATA_PARALLEL_PREFIX):]
        if name in stripped:
            raise TransferbenchError(f"{origin} stores '{name}' twice (with and without 'module.')")
        stripped[name] = value
    return stripped


def _split_suffix(key: str) -> tuple[str, str] | None:
    """``conv1._layer.weight`` → (``conv1.weight``, "value"); None for a plain key."""
    for suffix, kind, tensor in _ENCODED_SUFFIXES:
        if key.endswith(suffix):
            return f"{key[: -len(suffix)]}.{tensor}", kind
    return None


def detect_format(keys: list[str], is_ist_container: bool) -> str:
    """The dominant encoding among state-dict ``keys`` (``module.`` prefixes already stripped)."""
    if is_ist_container or any(k.endswith(("._layer.weight", "._weight_mask")) for k in keys):
        return "ist"
    if any(k.endswith(".sparseThreshold") for k in keys):
        return "str"
    if any(k.endswith((".weight_orig", ".weight_mask")) for k in keys):
        return "torch_prune"
    if any(k.startswith("initial_conv.") for k in keys):
        return "rigl"
    if any(k.startswith("_conv_stem.") for k in keys):  # lukemelas/EfficientNet-PyTorch naming (_blocks.N....)
        return "efficientnet_pytorch"
    return "plain"


def str_effective_weight(weight: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """STR's soft threshold: sign(W)·relu(|W| − sigmoid(s)), i.e. exact zeros where |W| ≤ sigmoid(s)."""
    return torch.sign(weight) * torch.relu(weight.abs() - torch.sigmoid(threshold.float()).to(weight.dtype))


def decode_checkpoint(obj: Any, origin: str, fmt: str = "auto") -> DecodedCheckpoint:
    """Turn a ``torch.load``-ed object into model-ready tensors and stored masks.

    ``fmt`` other than "auto" insists on that format (``plain`` also accepts RigL's names, which are a
    plain state dict too).
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise TransferbenchError(f"unknown checkpoint format '{fmt}'; choose auto, {', '.join(FORMATS)}")
    tensors, config, is_ist = _unnest(obj, origin)
    tensors = _strip_data_parallel(tensors, origin)
    detected = detect_format(list(tensors), is_ist)
    if fmt not in ("auto", detected) and not (fmt == "plain" and detected == "rigl"):
        raise TransferbenchError(
            f"{origin} is a '{detected}' checkpoint, not '{fmt}'; load it with format 'auto' (or '{detected}')"
        )

    state: dict[str, torch.Tensor] = {}
    values: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    thresholds: dict[str, torch.Tensor] = {}
    buckets = {"value": values, "mask": masks, "threshold": thresholds}
    for key, tensor in tensors.items():
        decoded = _split_suffix(key)
        if decoded is None:
            state[key] = tensor
        else:
            target, kind = decoded
            if target in buckets[kind]:
                raise TransferbenchError(f"{origin} encodes '{target}' twice; re-save the checkpoint")
            buckets[kind][target] = tensor
    if duplicated := sorted(set(state) & set(values)):
        raise TransferbenchError(
            f"{origin} stores '{duplicated[0]}' both plain and wrapped; re-save the checkpoint"
        )
    state.update(values)
    for name, threshold in thresholds.items():
        if name not in state:
            raise TransferbenchError(f"{origin} has an STR threshold for '{name}' but no such weight")
        if threshold.numel() != 1:
            raise TransferbenchError(
                f"{origin}: STR threshold for '{name}' has {threshold.numel()} values; only per-layer "
                f"(scalar) thresholds are supported"
            )
        state[name] = str_effective_weight(state[name], threshold.reshape(()))

    bool_masks: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if name not in state:
            raise TransferbenchError(f"{origin} has a mask for '{name}' but no such tensor")
        if mask.shape != state[name].shape:
            raise TransferbenchError(
                f"{origin}: mask for '{name}' has shape {tuple(mask.shape)}, tensor {tuple(state[name].shape)}"
            )
        keep = mask != 0
        # The stored weights are usually already multiplied by their mask; applying it again makes the
        # effective weights explicit even when a save happened between an optimizer step and re-masking.
        state[name] = state[name] * keep.to(state[name].dtype)
        if name.endswith(".weight"):
            bool_masks[name] = keep
    return DecodedCheckpoint(state=state, masks=bool_masks, format=detected, config=config)
