"""Offline end-to-end run of the whole pipeline, with no dataset or checkpoint download.

1. scikit-learn's bundled handwritten digits (real data, 1,797 images) are written to disk as a CIFAR-10
   python archive (`cifar-10-batches-py/`, the official layout), upsampled to 32×32 RGB;
2. a `resnet_tiny` upstream model is pruned to 90% global magnitude sparsity and saved in the IST-DASLab
   wrapped checkpoint format (`_layer.weight` + `_weight_mask` keys, `module.` prefixes);
3. `transferbench run` performs a linear probe and a mask-preserving full fine-tuning on it, and prints
   the records.

The upstream model is randomly initialised (upstream training comes with the pruning methods), so the
numbers show that the pipeline works, not how well a sparse ImageNet model transfers.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from transferbench.cli import main as transferbench
from transferbench.models import create_model
from transferbench.sparsity import prunable_weights


def write_digits_as_cifar10(root: Path, test_fraction: float = 1 / 6) -> None:
    digits = load_digits()
    images = (digits.images / 16.0 * 255).astype(np.uint8)  # [N, 8, 8]
    images = np.kron(images, np.ones((1, 4, 4), dtype=np.uint8))  # 32×32, nearest neighbour
    rgb = np.repeat(images[:, None], 3, axis=1).reshape(len(images), -1)  # CIFAR rows: RRR..GGG..BBB..
    # Keys are str, as the real (Python 2) pickles read under torchvision's encoding="latin1".
    labels = digits.target.tolist()
    order = np.random.default_rng(0).permutation(len(images))
    n_test = int(len(images) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(np.array_split(train, 5), start=1):
        batch = {"data": rgb[chunk], "labels": [labels[j] for j in chunk], "batch_label": "digits"}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": rgb[test], "labels": [labels[j] for j in test]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(d) for d in range(10)]}))


def write_sparse_checkpoint(path: Path, sparsity: float = 0.9, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = create_model("resnet_tiny", num_classes=1000)
    weights = prunable_weights(model, include_head=True)
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    threshold = magnitudes.kthvalue(int(sparsity * magnitudes.numel())).values
    state = {}
    for name, tensor in model.state_dict().items():
        layer, _, leaf = name.rpartition(".")
        if name in weights:
            mask = (tensor.abs() > threshold).float()
            state[f"module.{layer}._layer.weight"] = tensor * mask
            state[f"module.{layer}._weight_mask"] = mask
        elif leaf == "bias" and f"{layer}.weight" in weights:
            state[f"module.{layer}._layer.bias"] = tensor
            state[f"module.{layer}._bias_mask"] = torch.ones_like(tensor)
        else:
            state[f"module.{name}"] = tensor
    torch.save({"model_config": {"arch": "resnet_tiny", "dataset": "imagenet"}, "model_state_dict": state}, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/smoke"))
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    data_root, ckpt = args.out / "data", args.out / "upstream_resnet_tiny_90.pth"
    if not (data_root / "cifar-10-batches-py").exists():
        write_digits_as_cifar10(data_root)
    if not ckpt.exists():
        write_sparse_checkpoint(ckpt)
    common = ["run", "--checkpoint", str(ckpt), "--method", "magnitude", "--sparsity", "0.9", "--task",
              "cifar10", "--data-root", str(data_root), "--results", str(args.out), "--image-size", "32",
              "--workers", "0"]
    for extra in (["--mode", "linear", "--epochs", str(5 * args.epochs)],
                  ["--mode", "full", "--epochs", str(args.epochs), "--lr", "0.05"]):
        if transferbench([*common, *extra]) != 0:
            return 1
    for record in sorted((args.out / "runs").glob("*/result.json")):
        r = json.loads(record.read_text())
        print(json.dumps({k: r[k] for k in ("run_key", "mode", "target_sparsity")}
                         | {"top1": r["metrics"]["top1"], "sparsity_before": r["sparsity"]["backbone_before"],
                            "sparsity_after": r["sparsity"]["backbone_after"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
