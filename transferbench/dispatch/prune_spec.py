"""The prune entries of a sweep: one-shot post-training candidates (Wanda, SparseGPT) of dense models, made in the
upstream stage before the transfer jobs that use them, as `transferbench prune` makes them.

    prune:
      - method: [wanda, sparsegpt]           # one unit per method
        sparsity: [50%, 70%]                 # or pattern: "2:4" (the method becomes <method>_nm, 50%)
        from: /ckpts/deit_s.safetensors      # a dense checkpoint file, or the name of a registered dense row
        arch: deit_small_patch16_224         # the file's architecture (a registry row knows its own)
        calibration: imagenet                # imagenet (default) | shapes | a single-label task's training split
        data_root: /imagenet                 # ImageNet's folder, or the tasks' data root for a task
        samples: 512                         # calibration images (default: the recipe's)
        recipe: imagenet_resnet50            # data, transforms and calibration block (default: the dataset's)

Each (method, entry) is one ``UpstreamUnit`` whose products are the candidates' registry names, known before
anything runs: the dense row's name (or the file's stem and the first 8 hex digits of its sha256), the method, the
sparsity, the recipe's name with the sample's size and task, and the calibration seed. A transfer checkpoint of the
sweep with that method, sparsity and arch uses the candidate; without ``checkpoints:`` the sweep transfers all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoints.registry import named_checkpoint
from ..digests import sha256_file
from ..errors import TransferbenchError
from ..tasks import get_task
from ..upstream.candidates import calibration_seed
from ..upstream.from_dense import UPSTREAM_CALIBRATION, calibration_recipe, file_stem, oneshot_names, pruned_method
from ..upstream.recipes import checked_sparsities
from ..vocabulary import normalize_sparsity
from .upstream_spec import UpstreamUnit

PRUNE_ENTRY_KEYS = ("method", "sparsity", "pattern", "from", "arch", "calibration", "data_root", "samples", "recipe")


def prune_unit(method: str, sparsities: list, source: str | Path, *, arch: str | None = None,
               calibration: str | None = None, data_root: str | Path | None = None, samples: int | None = None,
               recipe: str | Path | None = None) -> UpstreamUnit:
    """The unit that prunes ``source`` one-shot with ``method`` (wanda, sparsegpt, or their 2:4 ``_nm``) to each
    of ``sparsities``, named as ``prune_published`` names its candidates. Reads the recipe, the registry and, for a
    file, its sha256 (from the digest cache when the file is unchanged); loads no model."""
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise TransferbenchError(f"samples {samples!r}: the calibration sample needs a whole number of images, 1 or "
                                 "more")
    task = None if calibration in (None, *UPSTREAM_CALIBRATION) else str(calibration)
    if task is not None and get_task(task).multilabel:  # an unknown name: one line listing the tasks
        raise TransferbenchError(f"calibration {task}: a class-balanced sample needs one label per image; {task} is "
                                 "multi-label: calibrate on a single-label task or on the upstream data")
    fractions = tuple(checked_sparsities(method, list(sparsities)))
    if 0.0 in fractions:
        raise TransferbenchError("sparsity 0 would leave the model dense; give the sparsities to prune to")
    path = Path(source).expanduser()
    if path.is_file():
        if not arch:
            raise TransferbenchError(f"from {source}: a file needs arch: (its architecture, e.g. resnet50 or any timm "
                                     "name), as `transferbench prune --arch` would read it from the file")
        stem, source, arch = file_stem(path, sha256_file(path)), str(path.resolve()), str(arch)
    else:
        row = named_checkpoint(str(source))
        if row is None or row.oneshot or row.sparsity != 0.0:
            raise TransferbenchError(f"from {source}: no such file, and not the name of a registered dense model; "
                                     "give a checkpoint file (with arch:) or a dense registry row")
        if arch and arch != row.arch:
            raise TransferbenchError(f"from {source} is a {row.arch} (registry row); drop arch: {arch}")
        stem, source, arch = row.name, row.name, row.arch
    dataset = str(calibration) if task is None and calibration else None
    rec = calibration_recipe(recipe, dataset, samples, task)
    return UpstreamUnit(
        method, fractions, arch, rec["dataset"], str(recipe or rec["name"]), rec["name"],
        tuple(oneshot_names(stem, method, fractions, rec)), calibration_seed(rec),
        data_root=str(Path(data_root).expanduser().resolve()) if data_root else None, source=source,
        single_process=True, stem=stem, samples=samples, calibration_task=task)


def parse_prune(raw: Any, origin: str) -> tuple[UpstreamUnit, ...]:
    """The units of a sweep's ``prune:`` list (method × entry), each problem one line naming the sweep file."""
    units: list[UpstreamUnit] = []
    for item in raw if isinstance(raw, list) else [raw]:
        if not isinstance(item, dict) or "method" not in item or "from" not in item:
            raise TransferbenchError(f"sweep {origin}: each prune entry needs method and from, got {item!r}")
        if unknown := sorted(set(item) - set(PRUNE_ENTRY_KEYS)):
            raise TransferbenchError(f"sweep {origin}: prune {item['method']!r} has unknown key(s) "
                                     f"{', '.join(unknown)}; known: {', '.join(PRUNE_ENTRY_KEYS)}")
        for pruner in item["method"] if isinstance(item["method"], list) else [item["method"]]:
            try:
                units.append(_entry_unit(str(pruner), item))
            except TransferbenchError as exc:
                raise TransferbenchError(f"sweep {origin}: prune {pruner!r}: {exc}") from None
    return tuple(units)


def _entry_unit(pruner: str, item: dict) -> UpstreamUnit:
    pattern = str(item["pattern"]) if item.get("pattern") is not None else None
    method = pruned_method(pruner, pattern)
    raw = item.get("sparsity")
    sparsities = [normalize_sparsity(s) for s in (raw if isinstance(raw, list) else [raw] if raw is not None else [])]
    if pattern and sparsities not in ([], [0.5]):
        raise TransferbenchError(f"pattern {pattern} keeps half the weights: drop sparsity (or give 50%)")
    if not pattern and not sparsities:
        raise TransferbenchError("give sparsity: (one or more) or pattern: 2:4")
    return prune_unit(method, sparsities or [0.5], item["from"], arch=item.get("arch"),
                      calibration=item.get("calibration"), data_root=item.get("data_root"),
                      samples=item.get("samples"), recipe=item.get("recipe"))
