"""`transferbench upstream --from NAME|PATH`: one-shot candidates of a published dense model (CrAM, §6.3).

The published CrAM models are dense: each sparsity the paper reports is the dense file pruned one-shot and
BN-recalibrated (pruning_methods.md §6.3, §6.5). For each requested sparsity this copies the dense model, prunes the
copy (global magnitude over every Conv/Linear weight as CrAM's ``one_shot_prune``, or 2:4 for ``cram_nm``),
recalibrates its BN on a seeded class-balanced sample of the upstream training set (the recipe's ``calibration:``
block), evaluates it on the validation set, and writes and registers it with where it came from (``pruned_from``:
the dense file's row and sha256). The registry's one-shot rows (``oneshot: true``) then resolve to these candidates
(``checkpoints.resolve``); a sweep prepares the missing ones in a stage of its own (``oneshot_rows_missing``,
``prepare_oneshot_rows``), never while planning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checkpoints import CheckpointSpec, LoadedCheckpoint, list_checkpoints, load_checkpoint, load_registered
from ..checkpoints import checkpoint_dir as default_checkpoint_dir
from ..checkpoints.registry import file_identity, named_checkpoint, oneshot_source, prepared_candidate
from ..context import resolve_device
from ..errors import TransferbenchError
from ..names import check_name, name_from
from ..pruning.bn import dataset_labels
from ..transforms import build_transform
from ..vocabulary import format_sparsity
from .candidates import (
    POSTTRAINING,
    Calibration,
    UpstreamResult,
    calibration_seed,
    one_shot_candidate,
    oneshot_metadata,
    register_candidate,
)
from .data import train_transform
from .datasets import upstream_datasets
from .recipes import checked_sparsities, load_recipe

log = logging.getLogger("transferbench")

CRAM_METHODS = ("cram", "cram_nm")  # CrAM's candidates: global magnitude (or 2:4) of a dense CrAM model
ONE_SHOT_METHODS = (*CRAM_METHODS, *POSTTRAINING)  # and Wanda / SparseGPT of any dense model
# The recipe whose data and calibration block a dense model is pruned with, by upstream dataset (--dataset).
DEFAULT_RECIPES = {"imagenet": "imagenet_resnet50", "shapes": "small_cpu"}
DENSE_TOLERANCE = 0.005  # a "dense" model may have this fraction of exact zeros (the loader's 0.5 pp gap)
PRUNERS = ("magnitude", "wanda", "sparsegpt")  # `transferbench prune --method` (pruned_method names their candidates)
PATTERNS = ("2:4",)
UPSTREAM_CALIBRATION = ("shapes", "imagenet")  # --calibration: upstream data; any other name is a task


@dataclass(frozen=True)
class DenseSource:
    """The dense model to prune, as loaded, and the registry row it was named by (None for a file by path)."""

    loaded: LoadedCheckpoint
    row: CheckpointSpec | None

    @property
    def identity(self) -> str:
        """What its candidates record as ``pruned_from``: ``NAME@sha256:HEX`` or ``sha256:HEX``."""
        return file_identity(self.row.name if self.row else None, self.loaded.sha256)

    @property
    def stem(self) -> str:
        """The first part of its candidates' names: the row's name, or the file's stem and digest prefix."""
        return self.row.name if self.row else file_stem(self.loaded.path, self.loaded.sha256)

    def metadata(self) -> dict:
        about = {"path": str(self.loaded.path), "sha256": self.loaded.sha256, "format": self.loaded.format}
        return {"row": self.row.name, **about} if self.row else about


def file_stem(path: Path, sha256: str) -> str:
    """The first part of the names of the candidates made of the file ``path`` (its content's ``sha256``): part of
    a registry name and a file name (names.py), short enough for the rest to follow."""
    return f"{name_from(Path(path).stem)[:40]}_{sha256[:8]}"


def pruned_method(pruner: str, pattern: str | None) -> str:
    """The registry method of ``pruner``'s candidates: ``wanda``, or ``wanda_nm`` for the 2:4 pattern;
    ``oneshot_magnitude`` (``_nm``) for magnitude, whose plain name is the registry's gradual magnitude pruning."""
    if pruner not in PRUNERS:
        raise TransferbenchError(f"method {pruner!r}: the post-training pruners are {', '.join(PRUNERS)}")
    if pattern not in (None, *PATTERNS):
        raise TransferbenchError(f"pattern {pattern}: the pruners make 2:4 patterns (or none: unstructured)")
    method = "oneshot_magnitude" if pruner == "magnitude" else pruner
    return f"{method}_nm" if pattern else method


def load_dense_source(source: str | Path, method: str, arch: str | None = None,
                      checkpoint_dir: str | Path | None = None) -> DenseSource:
    """``source`` is a local checkpoint file (any format the loader reads) or the name of a registered dense row
    of ``method`` (its file found in ``checkpoint_dir``, default the checkpoint directory, never downloaded, and
    checked against the row's sha256 when the row has one). Either must hold a dense model."""
    path = Path(source).expanduser()
    if path.is_file():
        loaded = load_checkpoint(path, arch=arch)
        row = None
    else:
        row = _dense_row(str(source), method, arch)
        loaded = load_registered(row, checkpoint_dir)
    if loaded.sparsity.overall > DENSE_TOLERANCE:
        raise TransferbenchError(f"--from {source}: {loaded.path} has {loaded.sparsity.overall:.2%} zeros, so it is "
                                 "not a dense model; one-shot pruning starts from the dense file")
    return DenseSource(loaded, row)


def _dense_row(name: str, method: str, arch: str | None) -> CheckpointSpec:
    row = named_checkpoint(name)
    if row is None:
        sources = sorted({s.oneshot_from for s in list_checkpoints() if s.oneshot})
        raise TransferbenchError(f"--from {name}: no such file and no registered checkpoint of that name; name a "
                                 f"dense row ({', '.join(sources)}) or a checkpoint file")
    if row.oneshot:
        raise TransferbenchError(f"--from {name}: {name} is a one-shot row, made from the dense {row.oneshot_from}; "
                                 f"pass --from {row.oneshot_from}")
    if row.sparsity != 0.0:
        raise TransferbenchError(f"--from {name}: {name} is {format_sparsity(row.sparsity)} sparse; --from takes "
                                 "a dense model")
    if row.method != method and method in CRAM_METHODS:
        raise TransferbenchError(f"--from {name} is a dense {row.method} model, and its candidates would be labelled "
                                 f"{method}; pass --method {row.method}" if row.method in CRAM_METHODS else
                                 f"--from {name} is a {row.method} model, not CrAM; --from prunes CrAM models")
    if arch and arch != row.arch:
        raise TransferbenchError(f"--from {name} is a {row.arch} (registry row); drop --arch {arch}")
    return row


def oneshot_name(stem: str, method: str, sparsities: Sequence[float], recipe_name: str, seed: int) -> str:
    """``<stem>_<method>_<sparsities>_oneshot_<recipe>_s<calibration seed>``, the sparsities as percents joined by
    ``-``: with one sparsity, a candidate's registry name; with several, the name of the group (a sweep unit)."""
    percents = "-".join(format_sparsity(s).rstrip("%") for s in sparsities)
    return check_name(f"{stem}_{method}_{percents}_oneshot_{recipe_name}_s{seed}",
                      f"recipe {recipe_name!r}: the candidate name (<dense row>_<method>_<percents>_oneshot_<recipe "
                      "name>_s<seed>)")


def oneshot_names(stem: str, method: str, sparsities: Sequence[float], rec: dict) -> list[str]:
    """The registry names of the candidates ``prune_published`` makes of the dense model ``stem`` (a registry row's
    name, or ``DenseSource.stem`` for a file) with the recipe ``rec``, one per sparsity. Reads nothing."""
    seed = calibration_seed(rec)
    return [oneshot_name(stem, method, [sparsity], rec["name"], seed) for sparsity in sparsities]


def prune_published(source: str | Path, method: str, sparsities: Sequence[float], *, dataset: str | None = None,
                    recipe: str | Path | None = None, data_root: Path | None = None, arch: str | None = None,
                    device: str = "auto", out_dir: Path | None = None,
                    checkpoint_dir: str | Path | None = None, samples: int | None = None,
                    calibration_task: str | None = None) -> list[UpstreamResult]:
    """Prune the dense ``source`` (a registry row's name or a file) one-shot to each of ``sparsities`` (``method``
    cram: global magnitude; cram_nm: 2:4, sparsity 0.5; wanda, sparsegpt and their 2:4 ``_nm``: layer-wise from the
    calibration sample, stem and head dense), recalibrate BN, evaluate, write and register one candidate each,
    under ``out_dir`` (default ``<checkpoint dir>/upstream``). The dense model is loaded once. ``samples``: the
    calibration sample's size instead of the recipe's.

    ``recipe`` (default: imagenet_resnet50 for ``dataset`` imagenet, the default, small_cpu for shapes) gives the
    data (image size, transforms) and the calibration sample; its arch is the source's. ``calibration_task``: the
    sample comes from that downstream task's training split (under ``data_root``) instead, through the recipe's
    transforms; the candidates are then not scored on upstream data (no upstream top-1) and their names say the
    task.
    """
    if method not in ONE_SHOT_METHODS:
        raise TransferbenchError(f"--from prunes a dense model one-shot: use --method cram (global magnitude) or "
                                 f"cram_nm (2:4) for a CrAM model, or {', '.join(POSTTRAINING)} (transferbench "
                                 f"prune) for any dense model, not {method}")
    sparsities = checked_sparsities(method, list(sparsities))
    if 0.0 in sparsities:
        raise TransferbenchError("--sparsity 0 would leave the model dense; pass the sparsities to prune to")
    dense = load_dense_source(source, method, arch, checkpoint_dir)
    rec = calibration_recipe(recipe, dataset, samples, calibration_task)
    rec.update(arch=dense.loaded.arch, **model_normalization(dense.loaded.model))
    if calibration_task is not None:
        train_set, test_set = task_calibration_set(calibration_task, data_root, rec), None
    else:
        train_set, test_set = upstream_datasets(rec, data_root)
        _check_classes(dense.loaded, dataset_labels(train_set), data_root)
    dev = resolve_device(device)
    model = dense.loaded.model.to(dev)
    calibration = Calibration.from_recipe(rec, train_set)
    about = {**oneshot_metadata(method, calibration), "source": dense.metadata()}
    if calibration_task is not None:
        about["calibration"]["task"] = calibration_task
    folder = out_dir or default_checkpoint_dir() / "upstream"
    log.info("one-shot %s candidates of %s at %s; BN calibration on %d images (seed %d)", method, dense.identity,
             ", ".join(format_sparsity(s) for s in sparsities), len(calibration.indices), calibration.seed)
    results = []
    for sparsity, name in zip(sparsities, oneshot_names(dense.stem, method, sparsities, rec), strict=True):
        start = time.perf_counter()
        net, masks = one_shot_candidate(model, method, sparsity, calibration, dev, arch=dense.loaded.arch)
        results.append(register_candidate(
            folder, rec, method, sparsity, net, masks, test_set, dev, calibration.seed, time.perf_counter() - start,
            about, name=name, pruned_from=dense.identity,
            notes=f"{dense.identity} pruned one-shot ({about['oneshot_pruning']}) and BN-recalibrated on "
                  f"{len(calibration.indices)} class-balanced {calibration_task or rec['dataset']} training images "
                  f"by transferbench ({rec['name']} recipe)"))
        del net, masks  # one candidate in memory at a time
    return results


def model_normalization(model: torch.nn.Module) -> dict:
    """``{"normalization": {mean, std}}`` of a model that brings its own preprocessing (a timm model's pretrained
    config: a ViT's 0.5s), for the recipe its calibration images go through; empty for the project's models, which
    take ImageNet's. Without it a ViT would be calibrated (and its BN, an EfficientNet's, recalibrated) on
    differently normalised images than it sees in transfer."""
    preprocessing = getattr(model, "preprocessing", None)
    norm = preprocessing().get("model_normalization") if callable(preprocessing) else None
    return {"normalization": {"mean": [float(v) for v in norm.mean], "std": [float(v) for v in norm.std]}} \
        if norm is not None else {}


def calibration_recipe(recipe: str | Path | None, dataset: str | None, samples: int | None = None,
                       calibration_task: str | None = None) -> dict:
    """The recipe one-shot candidates are made with: its data, transforms and calibration block (``recipe``, default
    the one of ``dataset``), the sample's size ``samples`` instead of the recipe's, the sample drawn from the
    downstream ``calibration_task`` instead of the upstream data. Both are in its name, so in the candidates'
    names: another sample makes other models. Reads the recipe only (a sweep's planner names products with it)."""
    rec = load_recipe(recipe or _default_recipe(dataset))  # its data and calibration; the method's knobs train
    rec["dataset"] = dataset or rec["dataset"]
    if samples is not None:
        rec["calibration"] = {**(rec.get("calibration") or {}), "size": int(samples)}
        rec["name"] = f"{rec['name']}_n{int(samples)}"
    if calibration_task is not None:
        rec["name"] = f"{rec['name']}_{calibration_task}"
    return rec


def task_calibration_set(task: str, data_root: Path | None, rec: dict) -> Dataset:
    """The downstream ``task``'s training split under the recipe's training transform (as the upstream data's own
    calibration sample is drawn), its labels at hand for the class-balanced sample (``pruning.bn.dataset_labels``)."""
    from ..tasks import Transformed, get_task, load_split

    split = load_split(get_task(task), "train", data_root)
    if split.targets != "single":
        raise TransferbenchError(f"--calibration {task}: a class-balanced sample needs one label per image; "
                                 f"{task} is multi-label: calibrate on a single-label task or on the upstream data")
    dataset = Transformed(split.dataset, build_transform(train_transform(rec)))
    dataset.labels = np.asarray(split.labels)  # read by dataset_labels before the wrapped dataset
    return dataset


def _default_recipe(dataset: str | None) -> str:
    dataset = dataset or "imagenet"
    if dataset not in DEFAULT_RECIPES:
        raise TransferbenchError(f"unknown upstream dataset '{dataset}' (--dataset); use shapes or imagenet")
    return DEFAULT_RECIPES[dataset]


def _check_classes(loaded: LoadedCheckpoint, labels, data_root: Path | None) -> None:
    classes = int(labels.max()) + 1 if len(labels) else 0
    if classes != loaded.num_classes:
        where = f"--data-root {data_root}" if data_root else "the upstream dataset"
        raise TransferbenchError(f"{where} has {classes} classes but {loaded.path}'s head has {loaded.num_classes}; "
                                 "calibrate and evaluate on the data the dense model was trained on")


def oneshot_rows_missing(specs: Iterable[CheckpointSpec]) -> list[CheckpointSpec]:
    """The one-shot rows among ``specs`` that have no prepared candidate yet (in the order given). Reads the
    registry and the disk only."""
    return [spec for spec in specs if spec.oneshot and prepared_candidate(spec) is None]


def prepare_oneshot_rows(specs: Iterable[CheckpointSpec], data_root: Path | None, *, recipe: str | Path | None = None,
                         dataset: str | None = None, device: str = "auto", out_dir: Path | None = None,
                         checkpoint_dir: str | Path | None = None) -> list[UpstreamResult]:
    """Prepare the candidates of the one-shot rows ``specs`` (e.g. ``oneshot_rows_missing(...)``): one
    ``prune_published`` per dense source and method, all its sparsities together (the dense file loaded once)."""
    groups: dict[tuple[str, str], set[float]] = {}
    for spec in specs:
        if not spec.oneshot:
            raise TransferbenchError(f"{spec.label} is not a one-shot row; it has nothing to prepare")
        groups.setdefault((oneshot_source(spec).name, spec.method), set()).add(spec.sparsity)
    results: list[UpstreamResult] = []
    for (source, method), sparsities in groups.items():
        results += prune_published(source, method, sorted(sparsities), dataset=dataset, recipe=recipe,
                                   data_root=data_root, device=device, out_dir=out_dir, checkpoint_dir=checkpoint_dir)
    return results
