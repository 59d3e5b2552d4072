"""Sparse upstream checkpoints for end-to-end tests, written as real files."""

from __future__ import annotations

from pathlib import Path

import torch

from transferbench.models import create_model
from transferbench.sparsity import prunable_weights


def write_pruned_checkpoint(path: Path, arch: str = "resnet_tiny", sparsity: float = 0.5, seed: int = 0,
                            ist_format: bool = True) -> dict[str, torch.Tensor]:
    """Global-magnitude-prune a fresh ``arch`` to ``sparsity`` and save it; returns the backbone masks.

    ``ist_format`` writes the IST-DASLab wrapped format with stored masks and ``module.`` prefixes, else a
    plain state_dict whose zeros are the only record of the mask.
    """
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=1000)
    weights = prunable_weights(model, include_head=True)
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    k = int(sparsity * magnitudes.numel())
    threshold = magnitudes.kthvalue(k).values if k else magnitudes.new_tensor(-1.0)  # sparsity 0: a dense file
    masks = {name: (w.detach().abs() > threshold) for name, w in weights.items()}
    state = {}
    for name, tensor in model.state_dict().items():
        layer, _, leaf = name.rpartition(".")
        if name in masks:
            pruned = tensor * masks[name]
            if ist_format:
                state[f"module.{layer}._layer.weight"] = pruned
                state[f"module.{layer}._weight_mask"] = masks[name].float()
            else:
                state[name] = pruned
        elif ist_format and leaf == "bias" and f"{layer}.weight" in masks:
            state[f"module.{layer}._layer.bias"] = tensor
            state[f"module.{layer}._bias_mask"] = torch.ones_like(tensor)
        else:
            state[f"module.{name}" if ist_format else name] = tensor
    blob = {"model_config": {"arch": arch, "dataset": "imagenet"}, "model_state_dict": state} if ist_format else state
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return {n: m for n, m in masks.items() if not n.startswith("fc.")}


def cifar10_world(root: Path, train_per_class: int = 12, test_per_class: int = 6) -> tuple[Path, Path, Path]:
    """A learnable cifar10 folder layout at 16 px and a resnet_tiny file pruned to 50% under ``root``; returns
    (root, data root, checkpoint)."""
    from fixtures_data import learnable_image, write_task

    data = root / "data"
    write_task("cifar10", data, "folders", train_per_class=train_per_class, test_per_class=test_per_class,
               image_size=16, image_fn=learnable_image)
    checkpoint = root / "tiny_50.pth"
    write_pruned_checkpoint(checkpoint, sparsity=0.5)
    return root, data, checkpoint
