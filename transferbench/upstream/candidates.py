"""What an upstream run ends with: one-shot candidates (CrAM), evaluation, the checkpoint file and its registry row."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Subset

from ..checkpoints import CheckpointSpec, register_local, save_checkpoint
from ..sparsity import measure_sparsity
from ..version import __version__
from ..vocabulary import format_sparsity
from .recipes import checkpoint_name

log = logging.getLogger("transferbench")


@dataclass
class UpstreamResult:
    path: Path
    spec: CheckpointSpec
    top1: float
    sparsity: float


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> float:
    model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)


def one_shot_candidates(model: torch.nn.Module, method: str, sparsities: list[float], rec: dict,
                        train_set: Dataset, dev: torch.device) -> list[tuple]:
    """CrAM's candidates: the trained model one-shot pruned to each sparsity (2:4 for cram_nm), BN recalibrated on
    a seeded class-balanced sample of the training set (§6.3: 1000 images, seed 42, training augmentation).
    Returns (sparsity, model, masks, calibration metadata) per candidate."""
    from ..pruning.bn import balanced_sample, bn_recalibrate, dataset_labels, indices_digest
    from ..pruning.oneshot import one_shot_prune

    calib = rec.get("calibration", {})
    seed = int(calib.get("seed", 42))
    indices = balanced_sample(dataset_labels(train_set), int(calib.get("size", 1000)), seed)
    calib_loader = DataLoader(Subset(train_set, indices), batch_size=int(calib.get("batch_size", 128)), shuffle=True,
                              generator=torch.Generator().manual_seed(seed))
    about = {"calibration": {"size": len(indices), "seed": seed, "batches": int(calib.get("batches", 20)),
                             "indices_sha256": indices_digest(indices), "sampling": "class-balanced"}}
    candidates = []
    for sp in sparsities:
        pruned = copy.deepcopy(model)
        masks = one_shot_prune(pruned, "2:4" if method == "cram_nm" else sp)
        bn_recalibrate(pruned, calib_loader, iters=int(calib.get("batches", 20)), device=dev)
        candidates.append((sp, pruned, masks, about))
    return candidates


def register_candidate(folder: Path, rec: dict, method: str, sp: float, net: torch.nn.Module, masks: dict,
                       test_set: Dataset, dev: torch.device, seed: int, seconds: float,
                       about: dict | None = None) -> UpstreamResult:
    """Evaluate one trained (or one-shot) model, write it in the project's format and register it."""
    top1 = evaluate(net, test_set, dev)
    measured = measure_sparsity(net, include_head=True).overall
    name = checkpoint_name(rec, method, sp, seed)
    path = folder / f"{name}.pth"
    metadata = {"method": method, "target_sparsity": float(sp), "measured_sparsity": measured,
                "recipe": rec["name"], "recipe_config": yaml.safe_dump(rec), "upstream_dataset": rec["dataset"],
                "upstream_top1": top1, "seed": seed, "train_seconds": seconds,
                "transferbench_version": __version__, **(about or {})}
    digest = save_checkpoint(path, net, masks, arch=rec["arch"], dataset=rec["dataset"], metadata=metadata)
    spec = register_local(CheckpointSpec(
        name=name, method=method, sparsity=float(sp), arch=rec["arch"], format="ist", filename=path.name,
        sha256=digest, upstream_top1=round(100 * top1, 2),
        notes=f"trained by transferbench upstream ({rec['name']} recipe, {rec['dataset']}, seed {seed})"), path)
    log.info("upstream %s %s: top1=%.4f sparsity=%.4f → %s", method, format_sparsity(sp), top1, measured, path)
    return UpstreamResult(path, spec, top1, measured)
