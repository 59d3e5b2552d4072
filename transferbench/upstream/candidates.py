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
from ..pruning.bn import balanced_sample, bn_recalibrate, dataset_labels, indices_digest
from ..pruning.oneshot import one_shot_prune
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


# CrAM's BN tuning (§6.3, §6.5): 100 forward passes of batches of 128 over 1000 random training images, seed 42;
# what a recipe without a `calibration:` block gets.
CALIBRATION_DEFAULTS = {"size": 1000, "seed": 42, "batches": 100, "batch_size": 128}
# The one-shot pruning each method's candidates get (§6.3): global magnitude at the sparsity, or a fixed N:M pattern.
ONE_SHOT_PATTERN = {"cram_nm": "2:4"}


@dataclass(frozen=True)
class Calibration:
    """The BN recalibration of one-shot candidates: ``batches`` train-mode passes of ``batch_size`` images over a
    seeded class-balanced sample of the training set (its training augmentation included, as CrAM's ``--use_calib``).

    Every candidate is recalibrated from the same seeds (sample order and augmentation), so a candidate depends on
    its model and this sample only, not on which other sparsities were prepared with it.
    """

    dataset: Dataset
    indices: tuple[int, ...]
    seed: int
    batches: int
    batch_size: int

    @classmethod
    def from_recipe(cls, rec: dict, train_set: Dataset) -> Calibration:
        """The sample the recipe's ``calibration:`` block (size, seed, batches, batch_size) asks for."""
        calib = {**CALIBRATION_DEFAULTS, **(rec.get("calibration") or {})}
        seed = int(calib["seed"])
        indices = balanced_sample(dataset_labels(train_set), int(calib["size"]), seed)
        return cls(train_set, tuple(indices), seed, int(calib["batches"]), int(calib["batch_size"]))

    def metadata(self) -> dict:
        # the batch size is the recipe's (recorded with it in the checkpoint's recipe_config)
        return {"size": len(self.indices), "seed": self.seed, "batches": self.batches,
                "indices_sha256": indices_digest(self.indices), "sampling": "class-balanced"}

    def recalibrate(self, model: torch.nn.Module, device: torch.device) -> None:
        loader = DataLoader(Subset(self.dataset, list(self.indices)), batch_size=self.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(self.seed))
        with torch.random.fork_rng(devices=[]):  # the augmentation's draws, without disturbing the caller's RNG
            torch.manual_seed(self.seed)
            bn_recalibrate(model, loader, iters=self.batches, device=device)


def one_shot_candidate(model: torch.nn.Module, method: str, sparsity: float, calibration: Calibration,
                       device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A copy of the dense ``model`` pruned one-shot to ``sparsity`` (2:4 for cram_nm) with its BN recalibrated;
    returns (the copy, its masks). ``model`` itself is left as it was."""
    pruned = copy.deepcopy(model)
    masks = one_shot_prune(pruned, ONE_SHOT_PATTERN.get(method, sparsity))
    calibration.recalibrate(pruned, device)
    return pruned, masks


def oneshot_metadata(method: str, calibration: Calibration) -> dict:
    """What a one-shot candidate's checkpoint records about how it was made."""
    pruning = ONE_SHOT_PATTERN.get(method, "global magnitude")
    return {"oneshot": True, "oneshot_pruning": pruning, "calibration": calibration.metadata()}


def one_shot_candidates(model: torch.nn.Module, method: str, sparsities: list[float], rec: dict,
                        train_set: Dataset, dev: torch.device) -> list[tuple]:
    """CrAM's candidates: the trained model one-shot pruned to each sparsity (2:4 for cram_nm), BN recalibrated on
    a seeded class-balanced sample of the training set (§6.3: 1000 images, seed 42, training augmentation).
    Returns (sparsity, model, masks, metadata) per candidate."""
    calibration = Calibration.from_recipe(rec, train_set)
    about = oneshot_metadata(method, calibration)
    return [(sp, *one_shot_candidate(model, method, sp, calibration, dev), about) for sp in sparsities]


def register_candidate(folder: Path, rec: dict, method: str, sp: float, net: torch.nn.Module, masks: dict,
                       test_set: Dataset, dev: torch.device, seed: int, seconds: float,
                       about: dict | None = None, *, name: str | None = None, notes: str | None = None,
                       pruned_from: str | None = None) -> UpstreamResult:
    """Evaluate one trained (or one-shot) model, write it in the project's format and register it (as ``name``,
    default the recipe's checkpoint name; ``pruned_from``: the dense file a one-shot candidate was pruned from)."""
    top1 = evaluate(net, test_set, dev)
    measured = measure_sparsity(net, include_head=True).overall
    name = name or checkpoint_name(rec, method, sp, seed)
    notes = notes or f"trained by transferbench upstream ({rec['name']} recipe, {rec['dataset']}, seed {seed})"
    path = folder / f"{name}.pth"
    metadata = {"method": method, "target_sparsity": float(sp), "measured_sparsity": measured,
                "recipe": rec["name"], "recipe_config": yaml.safe_dump(rec), "upstream_dataset": rec["dataset"],
                "upstream_top1": top1, "seed": seed, "train_seconds": seconds,
                "transferbench_version": __version__, **(about or {})}
    digest = save_checkpoint(path, net, masks, arch=rec["arch"], dataset=rec["dataset"], metadata=metadata)
    spec = register_local(CheckpointSpec(
        name=name, method=method, sparsity=float(sp), arch=rec["arch"], format="ist", filename=path.name,
        sha256=digest, upstream_top1=round(100 * top1, 2), pruned_from=pruned_from,
        notes=notes), path)
    log.info("upstream %s %s: top1=%.4f sparsity=%.4f → %s", method, format_sparsity(sp), top1, measured, path)
    return UpstreamResult(path, spec, top1, measured)
