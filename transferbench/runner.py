"""From a RunSpec to a result record: resolve the checkpoint, read the data, run the protocol, write."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import sha256_file
from .checkpoints import (
    CheckpointSpec,
    LoadedCheckpoint,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    local_path,
)
from .errors import TransferbenchError
from .finetune.features import cached_features, extract_with, feature_cache_key
from .finetune.full import finetune_full
from .finetune.linear import HeadResult, train_lbfgs_head, train_sgd_heads
from .records import existing_record, hardware, result_path, write_result
from .runspec import CheckpointRef, RunSpec, resolve_hparams
from .tasks import Split, TaskSpec, Transformed, get_task, load_split
from .transforms import build_transform, protocol_transform
from .vocabulary import normalize_sparsity

log = logging.getLogger("transferbench")


@dataclass
class RunContext:
    """Where and how runs execute; nothing here changes a run's numbers."""

    out: Path = Path("results")
    data_root: Path | None = None
    cache_dir: Path | None = None  # feature cache; default <out>/cache/features
    checkpoint_dir: Path | None = None
    device: str = "auto"
    num_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    extract_batch_size: int = 128
    force: bool = False
    verify_md5: bool = False
    allow_sparsity_gap: bool = False
    compile: bool = False  # torch.compile the model (same computation; float rounding may differ)
    # cuDNN autotuning on GPUs: faster convolutions, but float rounding then varies from run to run, so a resumed
    # full fine-tuning is no longer bit-identical to an uninterrupted one. Off: deterministic kernels.
    cudnn_benchmark: bool = False

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def feature_cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else Path(self.out) / "cache" / "features"


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when one is visible), ``cpu``, ``cuda`` or ``cuda:N``; anything else is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TransferbenchError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TransferbenchError(f"--device {name} requested but {torch.cuda.device_count()} CUDA GPU(s) are "
                                 "visible; use --device cpu or a visible index")
    if device.type not in ("cpu", "cuda"):
        raise TransferbenchError(f"--device {name}: only cpu and cuda are supported")
    return device


def resolve_checkpoint(method: str | None, sparsity: float | None, arch: str | None,
                       checkpoint: str | Path | None, checkpoint_dir: Path | None = None) -> CheckpointRef:
    """A registry entry (method + sparsity [+ arch]) or a local file (--checkpoint PATH)."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise TransferbenchError(f"checkpoint file {path} does not exist (--checkpoint)")
        if sparsity is None:
            raise TransferbenchError(
                f"--checkpoint {path} needs --sparsity (its registered/target sparsity, e.g. 0.9), which is "
                "checked against the measured sparsity"
            )
        if arch is None:
            arch = _arch_from_file(path)
        return CheckpointRef(method=method or "custom", sparsity=normalize_sparsity(sparsity), arch=arch,
                             identity=f"sha256:{sha256_file(path)}", path=str(path))
    if method is None or sparsity is None:
        raise TransferbenchError("name an upstream checkpoint with --method and --sparsity, or --checkpoint PATH")
    spec = find_checkpoint(method, sparsity, arch)
    if spec.oneshot:
        raise TransferbenchError(
            f"{spec.name} is a dense CrAM model that must be one-shot pruned to {spec.sparsity:g} and "
            "BN-recalibrated before transfer; produce that checkpoint first and pass it with --checkpoint"
        )
    path = local_path(spec, checkpoint_dir)
    # The file's digest is part of the identity: a re-trained or re-downloaded file under the same registry name
    # is a different run (sha256_file remembers digests by path, size and mtime, so a file is read once).
    return CheckpointRef(method=spec.method, sparsity=spec.sparsity, arch=spec.arch,
                         identity=f"{spec.name}@sha256:{sha256_file(path)}", path=str(path))


MINI_ARCH, MINI_RECIPE, MINI_DEFAULT_SPARSITY = "resnet_tiny", "small_cpu", 0.9


def resolve_mini_checkpoint(method: str, sparsity: float | None, arch: str | None) -> CheckpointRef:
    """For the offline mini-tasks: the registered upstream model of ``method``, trained on first use."""
    from .upstream import train_upstream

    arch = arch or MINI_ARCH
    if sparsity is None:
        sparsity = 0.0 if method == "dense" else MINI_DEFAULT_SPARSITY
    try:
        return resolve_checkpoint(method, sparsity, arch, None)
    except TransferbenchError as exc:
        from .pruning.factory import METHODS

        untrained = "not found" in str(exc) or "no '" in str(exc) or "unknown method" in str(exc)
        if not untrained or method not in METHODS:
            raise
    log.info("no %s upstream model at %s for %s yet: training one with the %s recipe (cached for later runs)",
             method, sparsity, arch, MINI_RECIPE)
    train_upstream(method, [normalize_sparsity(sparsity)], arch=arch, recipe=MINI_RECIPE)
    return resolve_checkpoint(method, sparsity, arch, None)


def _arch_from_file(path: Path) -> str:
    from .checkpoints import peek_arch

    arch = peek_arch(path)
    if arch is None:
        raise TransferbenchError(f"{path} does not name its architecture; pass --arch (e.g. resnet50)")
    return arch


def make_spec(task: str, mode: str, seed: int, checkpoint: CheckpointRef,
              overrides: dict | None = None) -> RunSpec:
    task_spec = get_task(task)
    if mode not in ("linear", "full"):
        raise TransferbenchError(f"--mode must be linear or full, not {mode!r}")
    overrides = dict(overrides or {})
    if task_spec.image_size != 224:  # mini-tasks run at their native resolution unless overridden
        overrides.setdefault("image_size", task_spec.image_size)
    hp = resolve_hparams(mode, task_spec.full_lr, overrides)
    return RunSpec(task=task_spec.name, mode=mode, seed=seed, checkpoint=checkpoint, hparams=hp)


def _registered(ref: CheckpointRef):
    """The registry row a run's checkpoint came from (by name), or None for --checkpoint PATH."""
    if ref.identity.startswith("sha256:"):
        return None
    name = ref.identity.partition("@")[0]
    return next(s for s in reversed(list_checkpoints()) if s.name == name)  # local.yaml rows last, newest last


def _load(ref: CheckpointRef, registered, ctx: RunContext):
    return load_checkpoint(
        ref.path, arch=ref.arch, expected_sha256=registered.sha256 if registered else None,
        target_sparsity=ref.sparsity, allow_sparsity_gap=ctx.allow_sparsity_gap,
    )


def _data_info(split, other) -> dict:
    return {"layout": split.layout, "root": str(split.root), "train_size": len(split), "test_size": len(other),
            "num_classes": len(split.classes), "paper_split": split.paper_split}


FEATURES_VERSION = 1  # bump when extraction or a built-in task's data generator changes what features hold


def _digest(values: list[int]) -> str:
    return hashlib.sha256(np.asarray(values, dtype=np.int64).tobytes()).hexdigest()[:16]


@dataclass
class _Prepared:
    task: TaskSpec
    train: Split
    test: Split
    loaded: LoadedCheckpoint
    registered: CheckpointSpec | None  # the registry row of the checkpoint (None for --checkpoint PATH)
    device: torch.device
    interpolation: str
    load_seconds: float


def _prepare(spec: RunSpec, ctx: RunContext) -> _Prepared:
    """Read the data first (cheap, most likely to be wrong), then load and check the checkpoint."""
    start = time.perf_counter()
    task = get_task(spec.task)
    train, test = (load_split(task, split, ctx.data_root, ctx.verify_md5) for split in ("train", "test"))
    registered = _registered(spec.checkpoint)
    loaded = _load(spec.checkpoint, registered, ctx)
    if loaded.arch != spec.checkpoint.arch:
        raise TransferbenchError(
            f"checkpoint {loaded.path} is a {loaded.arch} but the run asks for {spec.checkpoint.arch}; pass --arch "
            f"{loaded.arch}"
        )
    if ctx.compile and spec.hparams.engine == "torch":
        compile_model(loaded.model)
    return _Prepared(task, train, test, loaded, registered, ctx.torch_device(),
                     spec.hparams.interpolation or loaded.model.interpolation, time.perf_counter() - start)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` the model's ``forward`` and ``forward_features`` in place (state_dict keys unchanged, so
    full fine-tuning still saves and resumes plain weights). Off by default: the protocol's reference numbers are
    eager, and compiling costs every fresh process its first batches (ResNet50 extraction: 1.4x eager on 2 CPU
    cores after about 20 s of compiling, benchmarks/bench_fast.py --compile)."""
    model.forward = torch.compile(model.forward)
    model.forward_features = torch.compile(model.forward_features)
    return model


def run_linear_group(specs: list[RunSpec], ctx: RunContext) -> list[Path]:
    """Linear probes of one (checkpoint, task): features are extracted once and shared by every spec."""
    first = specs[0]
    if len({s.extraction_key for s in specs}) != 1 or first.mode != "linear":
        raise ValueError("run_linear_group takes linear specs that share one feature extraction")
    todo = [s for s in specs if ctx.force or existing_record(s, ctx.out) is None]
    if not todo:
        return [result_path(s, ctx.out) for s in specs]
    t_start = time.perf_counter()
    _require_loader(first)
    prep = _prepare(first, ctx)
    task, train, test, loaded, device = prep.task, prep.train, prep.test, prep.loaded, prep.device
    tcfg = protocol_transform(task, "linear", train=False, interpolation=prep.interpolation,
                              image_size=first.hparams.image_size)
    fast = {}  # --loader ffcv: the .beton of each split, checked against the data before anything is computed
    if first.hparams.loader == "ffcv":
        from .fastdata.ffcv_loader import open_split

        fast = {n: open_split(task, s, n, ctx.data_root, tcfg) for n, s in (("train", train), ("test", test))}
    feats = {}
    for name, split in (("train", train), ("test", test)):
        key = feature_cache_key(loaded.sha256, task.name, name, tcfg.to_dict(),
                                {"layout": split.layout, "root": str(split.root), "size": len(split),
                                 "labels": _digest(split.labels), "arch": loaded.arch,
                                 "precision": first.hparams.precision, "version": FEATURES_VERSION,
                                 **({"engine": first.hparams.engine} if first.hparams.engine != "torch" else {}),
                                 **(fast[name].key_info() if fast else {})})  # torchvision keys unchanged
        dataset = fast[name] if fast else Transformed(split.dataset, build_transform(tcfg))
        feats[name] = cached_features(
            ctx.feature_cache(), key,
            lambda d=dataset, n=name: extract_with(first.hparams.engine, loaded.model, d, ctx.extract_batch_size,
                                                   device, ctx.num_workers, desc=f"features {task.name}/{n}",
                                                   precision=first.hparams.precision),
        )
    num_classes = task.num_classes
    results: dict[RunSpec, HeadResult] = {}
    seconds: dict[RunSpec, float] = {}
    sgd_groups: dict[object, list[RunSpec]] = {}
    for spec in todo:
        if spec.hparams.solver == "sgd":
            sgd_groups.setdefault(spec.hparams, []).append(spec)
    for hp, group in sgd_groups.items():
        t0 = time.perf_counter()
        heads = train_sgd_heads(feats["train"].features, feats["train"].labels, feats["test"].features,
                                feats["test"].labels, num_classes, [s.seed for s in group], hp, device)
        for spec, head in zip(group, heads, strict=True):
            results[spec] = head
            seconds[spec] = (time.perf_counter() - t0) / len(group)
    for spec in todo:
        if spec.hparams.solver == "lbfgs":
            t0 = time.perf_counter()
            results[spec] = train_lbfgs_head(feats["train"].features, feats["train"].labels,
                                             feats["test"].features, feats["test"].labels, num_classes,
                                             spec.seed, spec.hparams)
            seconds[spec] = time.perf_counter() - t0
    for spec in todo:
        head = results[spec]
        record = {
            "checkpoint": _checkpoint_info(prep, spec),
            "sparsity": {
                "upstream_measured": loaded.sparsity.overall,
                "backbone_before": loaded.backbone_sparsity.overall,
                "backbone_after": loaded.backbone_sparsity.overall,  # frozen backbone: unchanged
                "per_layer": loaded.backbone_sparsity.per_layer,
            },
            "config": {
                "hparams": spec.hparams.to_dict(),
                "transform_train": tcfg.to_dict(),
                "transform_test": tcfg.to_dict(),
                "data": _data_info(train, test),
                "device": str(device), "compiled": ctx.compile, "cudnn_benchmark": ctx.cudnn_benchmark,
                "feature_cache": {n: str(f.path) if f.path else None for n, f in feats.items()},
            },
            "metrics": _metrics(task, head.top1, head.mean_per_class_acc, head.extra),
            "curve": head.curve,
            "timings": {
                "checkpoint_load_s": prep.load_seconds,
                "extraction_s": sum(f.seconds for f in feats.values()),
                "features_cached": all(f.cached for f in feats.values()),
                "training_s": seconds[spec],
                "group_size": len(todo),
                "total_s": time.perf_counter() - t_start,
            },
            "hardware": hardware(str(device)),
        }
        path = write_result(spec, ctx.out, record, head.test_logits, feats["test"].labels.numpy(), test.classes)
        log.info("run %s: top1=%.4f mean_per_class=%.4f → %s", spec.run_key, head.top1, head.mean_per_class_acc,
                 path)
    return [result_path(s, ctx.out) for s in specs]


def run_full(spec: RunSpec, ctx: RunContext) -> Path:
    if not ctx.force and existing_record(spec, ctx.out) is not None:
        return result_path(spec, ctx.out)
    t_start = time.perf_counter()
    _require_loader(spec)
    prep = _prepare(spec, ctx)
    task, train, test, loaded, device = prep.task, prep.train, prep.test, prep.loaded, prep.device
    model = loaded.model
    torch.manual_seed(spec.seed)
    model.reset_head(task.num_classes)  # the upstream head is never reused (pitfall P8)
    train_cfg = protocol_transform(task, "full", train=True, interpolation=prep.interpolation,
                                   image_size=spec.hparams.image_size)
    test_cfg = protocol_transform(task, "full", train=False, interpolation=prep.interpolation,
                                  image_size=spec.hparams.image_size)
    loaders = None
    if spec.hparams.loader == "ffcv":  # checked against the data before the work dir is touched
        from .fastdata.ffcv_loader import ffcv_loaders

        loaders = ffcv_loaders(task, train, test, ctx.data_root, train_cfg, test_cfg, spec.hparams.batch_size,
                               ctx.extract_batch_size, ctx.num_workers)
    work = spec.work_dir(ctx.out)
    if ctx.force and work.exists():
        shutil.rmtree(work)
    try:
        result = finetune_full(
            model, loaded.masks,
            Transformed(train.dataset, build_transform(train_cfg)),
            Transformed(test.dataset, build_transform(test_cfg)),
            task.num_classes, spec.hparams, spec.seed, work, device, ctx.num_workers, ctx.extract_batch_size,
            loaders=loaders,
        )
    except TransferbenchError:
        shutil.rmtree(work, ignore_errors=True)  # a diverged run is not resumable
        raise
    record = {
        "checkpoint": _checkpoint_info(prep, spec),
        "sparsity": {
            "upstream_measured": loaded.sparsity.overall,
            "backbone_before": result.sparsity_before["overall"],
            "backbone_after": result.sparsity_after["overall"],
            "per_layer": result.sparsity_after["per_layer"],
        },
        "config": {
            "hparams": spec.hparams.to_dict(),
            "transform_train": train_cfg.to_dict(),
            "transform_test": test_cfg.to_dict(),
            "data": _data_info(train, test),
            "device": str(device), "compiled": ctx.compile, "cudnn_benchmark": ctx.cudnn_benchmark,
            "num_workers": ctx.num_workers,
            **({"ffcv": loaders.describe()} if loaders is not None else {}),
        },
        "metrics": _metrics(task, result.top1, result.mean_per_class_acc,
                            {"best_epoch": result.best_epoch, "best_top1": result.best_top1}),
        "curve": result.curve,
        "timings": {
            "checkpoint_load_s": prep.load_seconds,
            "extraction_s": 0.0,
            "training_s": result.train_seconds,
            "resumed_from_epoch": result.resumed_from_epoch,
            "total_s": time.perf_counter() - t_start,
        },
        "hardware": hardware(str(device)),
    }
    path = write_result(spec, ctx.out, record, result.test_logits, result.test_labels, test.classes)
    shutil.rmtree(work, ignore_errors=True)
    log.info("run %s: top1=%.4f mean_per_class=%.4f → %s", spec.run_key, result.top1,
             result.mean_per_class_acc, path)
    return path


def _require_loader(spec: RunSpec) -> None:
    """--loader ffcv without FFCV installed: the install hint, before any data, checkpoint or file is touched."""
    if spec.hparams.loader == "ffcv":
        from .fastdata import require_ffcv

        require_ffcv()


def _metrics(task, top1: float, mpc: float, extra: dict) -> dict:
    primary = top1 if task.metric == "top1" else mpc
    return {"top1": top1, "mean_per_class_acc": mpc, "primary_metric": task.metric, "primary": primary, **extra}


def _checkpoint_info(prep: _Prepared, spec: RunSpec) -> dict:
    loaded = prep.loaded
    return {"identity": spec.checkpoint.identity, "path": str(loaded.path), "sha256": loaded.sha256,
            "format": loaded.format, "arch": loaded.arch,
            "upstream_top1": prep.registered.upstream_top1 if prep.registered else None}


def run(spec: RunSpec, ctx: RunContext) -> Path:
    """Run one spec (a no-op returning the record's path when it is already complete)."""
    configure_determinism(ctx.cudnn_benchmark)
    if spec.mode == "linear":
        return run_linear_group([spec], ctx)[0]
    return run_full(spec, ctx)


def configure_determinism(cudnn_benchmark: bool = False) -> None:
    """Deterministic cuDNN kernels (the default: reruns and resumes reproduce records), or its autotuner."""
    torch.backends.cudnn.deterministic = not cudnn_benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
