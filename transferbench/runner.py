"""The runner: from RunSpecs to RunRecords in the results store. It only runs: specs are built in ``runspec``,
checkpoints resolved in ``checkpoints``, where and how to run is the ``RunContext`` (``context``).

``run(specs, ctx)`` skips the runs whose record is complete, extracts features once per extraction key for the
linear probes of one (checkpoint, task) and trains all their heads, and runs each full fine-tuning on its own. Its
caller holds the runs' claims (a sweep job); ``run_claimed`` takes the claim itself (``transferbench run``).

Before a record is written the checkpoint is hashed again: a record never claims a digest its file no longer has.
The predictions are written before the record (whose presence means done); if either write fails, what this run
wrote of them is removed, so a full disk leaves no predictions file without its record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .checkpoints import CheckpointSpec, LoadedCheckpoint, load_checkpoint
from .checkpoints.resolve import registered_spec
from .context import (
    RunContext,
    apply_precision,
    check_capabilities,
    configure_determinism,
    determinism_state,
    hardware,
    package_versions,
    precision_policy,
    select_device,
)
from .digests import sha256_file
from .errors import TransferbenchError
from .estimators import KNN_K, KNN_METRIC, estimate_all, knn_votes
from .finetune.features import cached_features, extract_with, feature_cache_key
from .finetune.full import evaluate, finetune_full
from .finetune.linear import HeadResult, train_lbfgs_head, train_sgd_heads
from .finetune.loaders import decode_images, runner_loaders
from .metrics import accuracy_metrics
from .runspec import HParams, RunSpec, group_by_extraction
from .store import (
    PREDICTIONS_FILE,
    CheckpointInfo,
    Metrics,
    RunRecord,
    SparsityInfo,
    claim_runs,
    existing_record,
    record_dir,
    result_path,
    write_record,
)
from .store.claims import LockingUnsupported
from .store.layout import CLAIM_FILE, LOCK_FILE
from .tasks import Split, TaskSpec, Transformed, get_task, load_split
from .tasks.limit import limit_split
from .tasks.subset import split_off_validation, subset_info, subset_split
from .tracking import log_curve, require_trackers, spec_config, track
from .transforms import TransformConfig, build_transform, protocol_transform

log = logging.getLogger("transferbench")


def _load(ref, registered: CheckpointSpec | None, ctx: RunContext) -> LoadedCheckpoint:
    return load_checkpoint(
        ref.path, arch=ref.arch, expected_sha256=registered.sha256 if registered else None,
        target_sparsity=ref.sparsity, allow_sparsity_gap=ctx.allow_sparsity_gap,
        method=ref.method, prunable=registered.prunable if registered else None,  # the method's prunable set
    )


def _data_info(split, other, validation=None) -> dict:
    return {"layout": split.layout, "root": str(split.root), "train_size": len(split), "test_size": len(other),
            "num_classes": len(split.classes), "paper_split": split.paper_split,
            **({"train_subset": subset_info(split)} if split.subset else {}),
            **({"validation_size": len(validation)} if validation is not None else {}),
            **({"backdoored": int(np.sum(split.backdoored)), "backdoored_test": int(np.sum(other.backdoored))}
               if split.backdoored is not None else {}),
            **({"validation_subset": subset_info(validation)} if validation is not None and validation.subset
               else {})}


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
    validation: Split | None = None  # --validation-size: held out of the --train-size images

    def splits(self) -> list[tuple[str, Split]]:
        return [("train", self.train), ("test", self.test)] + ([("validation", self.validation)]
                                                                if self.validation is not None else [])


def _prepare(spec: RunSpec, ctx: RunContext) -> _Prepared:
    """Read the data first (cheap, most likely to be wrong), then load and check the checkpoint."""
    start = time.perf_counter()
    task = get_task(spec.task)
    train, test = (limit_split(load_split(task, split, ctx.data_root, ctx.verify_md5), spec.hparams.limit)
                   for split in ("train", "test"))  # --limit: a quick try on a subset (tasks.limit)
    hp = spec.hparams  # --train-size/--train-per-class: the low-data regime's seeded subset (tasks.subset)
    validation = None
    if task.extra.get("validation_split"):  # the task's official validation split (CelebA): thresholds fit on it
        validation = limit_split(load_split(task, "validation", ctx.data_root, ctx.verify_md5), hp.limit)
    elif hp.validation_size:
        train, validation = split_off_validation(train, spec.seed, hp.train_size, hp.validation_size)
    else:
        train = subset_split(train, spec.seed, hp.train_size, hp.train_per_class)
    registered = registered_spec(spec.checkpoint)
    loaded = _load(spec.checkpoint, registered, ctx)
    if loaded.arch != spec.checkpoint.arch:
        raise TransferbenchError(
            f"checkpoint {loaded.path} is a {loaded.arch} but the run asks for {spec.checkpoint.arch}; pass --arch "
            f"{loaded.arch}"
        )
    if ctx.compile and spec.hparams.engine == "torch":
        compile_model(loaded.model)
    return _Prepared(task, train, test, loaded, registered, ctx.torch_device(),
                     spec.hparams.interpolation or loaded.model.interpolation, time.perf_counter() - start,
                     validation)


def _preprocessing(prep: _Prepared) -> dict:
    """The model's own preprocessing (a timm model's pretrained config: normalisation, crop fraction), if any."""
    preprocessing = getattr(prep.loaded.model, "preprocessing", None)
    return preprocessing() if callable(preprocessing) else {}


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` the model's ``forward`` and ``forward_features`` in place (state_dict keys unchanged, so
    full fine-tuning still saves and resumes plain weights). Off by default: the protocol's reference numbers are
    eager, and compiling costs every fresh process its first batches (ResNet50 extraction: 1.4x eager on 2 CPU
    cores after about 20 s of compiling, benchmarks/bench_fast.py --compile)."""
    model.forward = torch.compile(model.forward)
    model.forward_features = torch.compile(model.forward_features)
    return model


def run(specs: RunSpec | list[RunSpec], ctx: RunContext) -> list[RunRecord]:
    """Run ``specs`` and return their records, in order. Runs whose record is complete are not run again (unless
    ``ctx.force``); the linear probes that share an extraction key share one feature extraction."""
    specs = [specs] if isinstance(specs, RunSpec) else list(specs)
    require_trackers(ctx.trackers)  # --log of a backend not installed: its pip extra, before any work
    configure_determinism(ctx.cudnn_benchmark)  # first: cuBLAS's workspace must be set before CUDA starts
    device = ctx.torch_device()  # a device index that does not exist: a one-line error before any work
    select_device(device)
    check_capabilities(device, {s.hparams.precision for s in specs},
                       ctx.compile and any(s.hparams.engine == "torch" for s in specs),
                       {s.hparams.engine for s in specs})
    for spec in specs:
        _require_record_paths_free(ctx.results, spec.run_key)
    records: dict[str, RunRecord] = {}
    for group in group_by_extraction(specs):
        if group[0].mode == "linear":
            records.update((r.run_key, r) for r in _run_linear(group, ctx))
        elif group[0].mode == "estimate":
            record = _run_estimate(group[0], ctx)
            records[record.run_key] = record
        elif group[0].mode == "evaluate":
            record = _run_evaluate(group[0], ctx)
            records[record.run_key] = record
        else:
            record = _run_full(group[0], ctx)
            records[record.run_key] = record
    return [records[s.run_key] for s in specs]


def _require_record_paths_free(root: Path, key: str) -> None:
    """A record or predictions path that is a folder (or anything but a file) would fail the run at its very
    end, after the training: refused before any work."""
    result = result_path(root, key)
    for path in (result, result.parent / PREDICTIONS_FILE):
        if os.path.lexists(path) and not path.is_file():
            raise TransferbenchError(f"{path} is not a file (the run writes its {path.name} there); remove it and "
                                     "run again")


def run_claimed(spec: RunSpec, ctx: RunContext, note: Callable[[str], None] = log.warning) -> RunRecord:
    """``run`` one spec holding its claim, as a sweep job holds its runs' (``transferbench run``): `status` shows it
    running, and a sweep or another identical ``run`` does not run it a second time.

    When another process holds the run, one ``note`` line says so and this one waits for it to end, then uses the
    record it wrote (with ``ctx.force`` too: that record is newer than the call). If it ended without a record,
    this process runs it (full fine-tuning resumes from the other's last epoch). A results root whose filesystem
    cannot lock runs without a claim, after a note.
    """
    before = _stamp(result_path(ctx.results, spec.run_key))
    created = _missing_folders(spec.work_dir(ctx.results), stop=Path(ctx.results).parent)
    waited: list[dict] = []

    def on_wait(key: str, holder: dict) -> None:
        waited.append(holder)
        who = f"job {holder.get('job_id', '?')} on {holder.get('host', '?')}" if holder else "another process"
        note(f"note: {key} is being run by {who}; waiting for it to end to use its record (this process runs it "
             "if that one ends without a record)")

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(claim_runs([spec.run_key], ctx.results, f"run-{os.getpid()}", wait=on_wait))
        except LockingUnsupported as exc:
            note(f"note: running without a claim: {exc}")
        if waited and ctx.force and _stamp(result_path(ctx.results, spec.run_key)) != before:
            ctx = replace(ctx, force=False)  # the holder wrote its record while this call waited: use it
        try:
            [record] = run(spec, ctx)
        finally:
            _remove_idle_work(spec.work_dir(ctx.results))
            _remove_if_empty(created)  # a run refused before it wrote anything leaves no results folder behind
    return record


def _missing_folders(path: Path, stop: Path) -> list[Path]:
    """The folders from ``path`` up to (not including) ``stop`` that do not exist yet, deepest first."""
    missing = []
    for folder in [Path(path), *Path(path).parents]:
        if folder == stop or folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove each folder (deepest first) while it is empty; the first one holding anything stops it."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Which file is at ``path`` (inode, size, mtime), None when none: tells whether a write replaced it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _remove_idle_work(work: Path) -> None:
    """A claimed run leaves its lock file (a finished full run removes its work folder itself): removed when that
    is all there is (a failed full run keeps its training state, and so its folder). Safe while locked: a process
    waiting on the removed lock file locks the new one instead."""
    with contextlib.suppress(OSError):
        if set(os.listdir(work)) <= {LOCK_FILE, CLAIM_FILE}:
            shutil.rmtree(work)


def _run_linear(specs: list[RunSpec], ctx: RunContext) -> list[RunRecord]:
    """Linear probes of one extraction key: features extracted (or read from the cache) once, every head trained."""
    done = {s.run_key: r for s in specs if not ctx.force and (r := existing_record(ctx.results, s.run_key))}
    todo = [s for s in specs if s.run_key not in done]
    if todo:
        t_start = time.perf_counter()
        _require_loader(todo[0])
        prep = _prepare(todo[0], ctx)
        apply_precision(prep.device.type, todo[0].hparams.precision)
        tcfg = protocol_transform(prep.task, "linear", train=False, interpolation=prep.interpolation,
                                  image_size=todo[0].hparams.image_size, **_preprocessing(prep))
        feats = _features(todo[0], prep, tcfg, ctx)
        heads, seconds = _train_heads(todo, prep, feats)
        _recheck_checkpoint(todo[0], prep, [f.path for f in feats.values() if not f.cached and f.path])
        for spec in todo:
            done[spec.run_key] = _write_linear(spec, prep, tcfg, feats, heads[spec], seconds[spec], len(todo),
                                               time.perf_counter() - t_start, ctx)
    return [done[s.run_key] for s in specs]


def _features(first: RunSpec, prep: _Prepared, tcfg: TransformConfig, ctx: RunContext) -> dict:
    """The train and test features of the group (the cache's entries, or extracted now and cached)."""
    task, loaded = prep.task, prep.loaded
    fast = {}  # --loader ffcv: the .beton of each split, checked against the data before anything is computed
    if first.hparams.loader == "ffcv":
        from .fastdata.ffcv_loader import open_split

        fast = {n: open_split(task, s, n, ctx.data_root, tcfg) for n, s in (("train", prep.train), ("test", prep.test))}
    feats = {}
    for name, split in prep.splits():
        key = features_key(loaded.sha256, loaded.arch, task.name, name, tcfg.to_dict(), split, first.hparams,
                           prep.device.type, fast[name].key_info() if fast else None)
        dataset = fast[name] if fast else Transformed(split.dataset, build_transform(tcfg))
        feats[name] = cached_features(
            ctx.feature_cache(), key,
            lambda d=dataset, n=name: extract_with(first.hparams.engine, loaded.model, d, ctx.extract_batch_size,
                                                   prep.device, ctx.num_workers, desc=f"features {task.name}/{n}",
                                                   precision=first.hparams.precision),
        )
    return feats


def features_key(checkpoint_sha256: str, arch: str, task: str, split_name: str, transform: dict, split: Split,
                 hp: HParams, device_type: str, loader_info: dict | None = None) -> str:
    """The feature-cache key of one split: everything the features depend on, the device type and precision policy
    included (CPU, fp32-GPU, TF32-GPU and bf16 features never stand in for each other)."""
    data = {"layout": split.layout, "root": str(split.root), "size": len(split), "labels": _digest(split.labels),
            "arch": arch, "precision": hp.precision, "version": FEATURES_VERSION,
            "numerics": precision_policy(device_type, hp.precision),
            **({"engine": hp.engine} if hp.engine != "torch" else {}), **(loader_info or {}),
            **({"subset": split.subset} if getattr(split, "subset", "") else {}),
            # a backdoor variant: which images carry the cue (the card's fractions and seed)
            **({"backdoored": _digest(np.flatnonzero(split.backdoored).tolist())}
               if getattr(split, "backdoored", None) is not None else {})}
    return feature_cache_key(checkpoint_sha256, task, split_name, transform, data)


def _train_heads(todo: list[RunSpec], prep: _Prepared, feats: dict) -> tuple[dict, dict]:
    """Every spec's head: the SGD heads of equal hyper-parameters in one batched pass, L-BFGS heads one by one.
    Returns (head per spec, training seconds per spec)."""
    train, test, num_classes = feats["train"], feats["test"], prep.task.num_classes
    results: dict[RunSpec, HeadResult] = {}
    seconds: dict[RunSpec, float] = {}
    sgd_groups: dict[object, list[RunSpec]] = {}
    for spec in todo:
        if spec.hparams.solver == "sgd":
            sgd_groups.setdefault(spec.hparams, []).append(spec)
    for hp, group in sgd_groups.items():
        t0 = time.perf_counter()
        validation = feats.get("validation")
        heads = train_sgd_heads(train.features, train.labels, test.features, test.labels, num_classes,
                                [s.seed for s in group], hp, prep.device,
                                validation=(validation.features, validation.labels) if validation else None)
        for spec, head in zip(group, heads, strict=True):
            results[spec] = head
            seconds[spec] = (time.perf_counter() - t0) / len(group)
    for spec in todo:
        if spec.hparams.solver == "lbfgs":
            t0 = time.perf_counter()
            results[spec] = train_lbfgs_head(train.features, train.labels, test.features, test.labels, num_classes,
                                             spec.seed, spec.hparams)
            seconds[spec] = time.perf_counter() - t0
    return results, seconds


def _upstream_sparsity(loaded: LoadedCheckpoint) -> dict:
    """The upstream model's sparsity over every Conv/Linear weight and over the weights its method prunes."""
    in_set = loaded.method_sparsity
    return {"upstream_measured": loaded.sparsity.overall, "prunable_set": loaded.prunable,
            "upstream_measured_prunable": in_set.overall if in_set is not None else None}


def _write_linear(spec: RunSpec, prep: _Prepared, tcfg: TransformConfig, feats: dict, head: HeadResult,
                  training_s: float, group_size: int, elapsed_s: float, ctx: RunContext) -> RunRecord:
    loaded = prep.loaded
    record = _record(
        spec, prep, ctx, metrics=_metrics(prep.task, head.top1, head.mean_per_class_acc, head.extra),
        sparsity=SparsityInfo(backbone_before=loaded.backbone_sparsity.overall,
                              backbone_after=loaded.backbone_sparsity.overall,  # frozen backbone: unchanged
                              per_layer=loaded.backbone_sparsity.per_layer, **_upstream_sparsity(loaded)),
        config={"transform_train": tcfg.to_dict(), "transform_test": tcfg.to_dict(),
                "feature_cache": {n: str(f.path) if f.path else None for n, f in feats.items()},
                # SGD heads on a CPU train with subnormals flushed to zero (finetune.linear.flushed_denormals)
                "denormals_flushed": spec.hparams.solver == "sgd" and prep.device.type == "cpu"
                and torch.set_flush_denormal(False)},
        curve=head.curve,
        timings={"checkpoint_load_s": prep.load_seconds, "extraction_s": sum(f.seconds for f in feats.values()),
                 "features_cached": all(f.cached for f in feats.values()), "training_s": training_s,
                 "group_size": group_size, "total_s": elapsed_s})
    path = _store(ctx.results, record, head.test_logits, feats["test"].labels.numpy(), prep.test.classes,
                  study_arrays(prep, head.validation_logits))
    log_curve(ctx.trackers, spec.run_key, spec_config(spec), ctx.results, head.curve,
              {"top1": head.top1, "mean_per_class_acc": head.mean_per_class_acc, **head.extra})
    log.info("run %s: top1=%.4f mean_per_class=%.4f → %s", spec.run_key, head.top1, head.mean_per_class_acc, path)
    return record


def _run_estimate(spec: RunSpec, ctx: RunContext) -> RunRecord:
    """Every transferability estimator on the train split's features (the linear probe's, from the same cache),
    and a k-NN classifier of the test split by the train split as the record's accuracy and predictions."""
    if not ctx.force and (done := existing_record(ctx.results, spec.run_key)) is not None:
        return done
    t_start = time.perf_counter()
    prep = _prepare(spec, ctx)
    apply_precision(prep.device.type, spec.hparams.precision)
    tcfg = protocol_transform(prep.task, "linear", train=False, interpolation=prep.interpolation,
                              image_size=spec.hparams.image_size, **_preprocessing(prep))
    feats = _features(spec, prep, tcfg, ctx)
    t0 = time.perf_counter()
    train, test = feats["train"], feats["test"]
    scores = estimate_all(train.features.numpy(), train.labels.numpy(), _source_probs(prep.loaded, train.features))
    votes = knn_votes(test.features.numpy(), train.features.numpy(), train.labels.numpy())
    votes = np.pad(votes, ((0, 0), (0, prep.task.num_classes - votes.shape[1])))  # classes absent from train
    knn = accuracy_metrics(votes, test.labels.numpy(), prep.task.num_classes)
    seconds = time.perf_counter() - t0
    _recheck_checkpoint(spec, prep, [f.path for f in feats.values() if not f.cached and f.path])
    loaded = prep.loaded
    record = _record(
        spec, prep, ctx,
        metrics=_metrics(prep.task, knn["top1"], knn["mean_per_class_acc"],
                         {"estimators": scores, "estimated_on": "train", "knn_k": KNN_K, "knn_metric": KNN_METRIC}),
        sparsity=SparsityInfo(backbone_before=loaded.backbone_sparsity.overall,
                              backbone_after=loaded.backbone_sparsity.overall,
                              per_layer=loaded.backbone_sparsity.per_layer, **_upstream_sparsity(loaded)),
        config={"transform_train": tcfg.to_dict(), "transform_test": tcfg.to_dict(),
                "feature_cache": {n: str(f.path) if f.path else None for n, f in feats.items()}},
        curve=[],
        timings={"checkpoint_load_s": prep.load_seconds, "extraction_s": sum(f.seconds for f in feats.values()),
                 "features_cached": all(f.cached for f in feats.values()), "estimators_s": seconds,
                 "total_s": time.perf_counter() - t_start})
    path = _store(ctx.results, record, votes / KNN_K, test.labels.numpy(), prep.test.classes)
    log.info("estimate %s: %s knn_top1=%.4f → %s", spec.run_key,
             " ".join(f"{k}={v:.4g}" for k, v in scores.items() if v is not None), knn["top1"], path)
    return record


def _run_evaluate(spec: RunSpec, ctx: RunContext) -> RunRecord:
    """The checkpoint's own head on the task's test split (and validation split, when the task has one), through the
    full-mode test transform, nothing trained: the record and predictions of a model trained on the task itself
    (the bias study's CelebA models from scratch), which the analyses read as any run's."""
    if not ctx.force and (done := existing_record(ctx.results, spec.run_key)) is not None:
        return done
    t_start = time.perf_counter()
    prep = _prepare(spec, ctx)
    apply_precision(prep.device.type, spec.hparams.precision)
    trained_seed = prep.loaded.trained_seed
    if trained_seed is not None and trained_seed != spec.seed:  # the analyses pair dense and sparse runs by seed
        raise TransferbenchError(
            f"checkpoint {prep.loaded.path} was trained with seed {trained_seed}: evaluate it with --seed "
            f"{trained_seed} (the bias report pairs dense and sparse runs by their seed)")
    outputs = prep.loaded.model.num_classes
    if outputs != prep.task.num_classes:
        raise TransferbenchError(
            f"checkpoint {prep.loaded.path} has a head of {outputs} outputs but {prep.task.name} has "
            f"{prep.task.num_classes}: --mode evaluate is for a model trained on the task itself (use linear or full "
            "to transfer it)")
    cfg = protocol_transform(prep.task, "full", train=False, interpolation=prep.interpolation,
                             image_size=spec.hparams.image_size, **_preprocessing(prep))
    logits, labels = {}, {}
    work = spec.work_dir(ctx.results)  # decoded splits too large for memory go there, as a full run's
    for name, split in [("test", prep.test)] + ([("validation", prep.validation)] if prep.validation else []):
        decoded = decode_images(split.dataset, cfg, ctx.extract_batch_size, ctx.num_workers, work / name)
        logits[name], labels[name] = evaluate(prep.loaded.model.to(prep.device), decoded.batches(
            ctx.extract_batch_size, prep.device), prep.device, spec.hparams.precision)
    metrics = accuracy_metrics(logits["test"], labels["test"], prep.task.num_classes)
    _recheck_checkpoint(spec, prep)
    loaded = prep.loaded
    record = _record(
        spec, prep, ctx, metrics=_metrics(prep.task, metrics["top1"], metrics["mean_per_class_acc"], {}),
        sparsity=SparsityInfo(backbone_before=loaded.backbone_sparsity.overall,
                              backbone_after=loaded.backbone_sparsity.overall,
                              per_layer=loaded.backbone_sparsity.per_layer, **_upstream_sparsity(loaded)),
        config={"transform_test": cfg.to_dict()}, curve=[],
        timings={"checkpoint_load_s": prep.load_seconds, "total_s": time.perf_counter() - t_start})
    path = _store(ctx.results, record, logits["test"], labels["test"], prep.test.classes,
                  study_arrays(prep, logits.get("validation")))
    shutil.rmtree(work, ignore_errors=True)  # as a finished full run's
    log.info("evaluate %s: top1=%.4f mean_per_class=%.4f → %s", spec.run_key, metrics["top1"],
             metrics["mean_per_class_acc"], path)
    return record


def _source_probs(loaded: LoadedCheckpoint, features: torch.Tensor) -> np.ndarray:
    """The upstream head's softmax on the features (LEEP's and NCE's theta(x)): every registry checkpoint keeps
    its ImageNet head, which neither the extraction nor the estimators change."""
    model = loaded.model
    with torch.no_grad():
        head = model.head_module()
        logits = model.forward_head(features.to(next(head.parameters()).device, torch.float32))
    return torch.softmax(logits.double(), dim=1).cpu().numpy()


def _run_full(spec: RunSpec, ctx: RunContext) -> RunRecord:
    """Full fine-tuning with the checkpoint's mask kept fixed; resumes from its last epoch in ``work/<key>/``."""
    if not ctx.force and (done := existing_record(ctx.results, spec.run_key)) is not None:
        return done
    t_start = time.perf_counter()
    _require_loader(spec)
    prep = _prepare(spec, ctx)
    apply_precision(prep.device.type, spec.hparams.precision)
    task, train, test = prep.task, prep.train, prep.test
    torch.manual_seed(spec.seed)
    prep.loaded.model.reset_head(task.num_classes)  # the upstream head is never reused (pitfall P8)
    train_cfg, test_cfg = (protocol_transform(task, "full", train=t, interpolation=prep.interpolation,
                                              image_size=spec.hparams.image_size, **_preprocessing(prep))
                           for t in (True, False))
    loaders = None
    if spec.hparams.loader == "ffcv":  # checked against the data before the work dir is touched
        from .fastdata.ffcv_loader import ffcv_loaders

        loaders = ffcv_loaders(task, train, test, ctx.data_root, train_cfg, test_cfg, spec.hparams.batch_size,
                               ctx.extract_batch_size, ctx.num_workers, prep.device)
    ffcv_info = {"ffcv": loaders.describe()} if loaders is not None else {}
    work = spec.work_dir(ctx.results)
    if ctx.force:
        _clear_work(work)
    try:
        if loaders is None:
            loaders = runner_loaders(train.dataset, test.dataset, train_cfg, test_cfg, spec.hparams.batch_size,
                                     ctx.extract_batch_size, ctx.num_workers, prep.device, work)
        with track(ctx.trackers, spec.run_key, spec_config(spec), ctx.results) as tracking:  # no-op without --log
            result = finetune_full(prep.loaded.model, prep.loaded.masks, None, None, task.num_classes,
                                   spec.hparams, spec.seed, work, prep.device, loaders=loaders,
                                   on_epoch=tracking.log_point)
            tracking.summary.update(top1=result.top1, mean_per_class_acc=result.mean_per_class_acc,
                                    best_epoch=result.best_epoch, best_top1=result.best_top1)
    except TransferbenchError:
        _clear_work(work)  # a diverged run is not resumable
        raise
    validation_logits = _validation_logits(prep, test_cfg, spec, ctx, work) if prep.validation else None
    _recheck_checkpoint(spec, prep)
    record = _record(
        spec, prep, ctx,
        metrics=_metrics(task, result.top1, result.mean_per_class_acc,
                         {"best_epoch": result.best_epoch, "best_top1": result.best_top1}),
        sparsity=SparsityInfo(backbone_before=result.sparsity_before["overall"],
                              backbone_after=result.sparsity_after["overall"],
                              per_layer=result.sparsity_after["per_layer"], **_upstream_sparsity(prep.loaded)),
        config={"transform_train": train_cfg.to_dict(), "transform_test": test_cfg.to_dict(),
                "num_workers": ctx.num_workers, **ffcv_info},
        curve=result.curve,
        timings={"checkpoint_load_s": prep.load_seconds, "extraction_s": 0.0, "training_s": result.train_seconds,
                 "resumed_from_epoch": result.resumed_from_epoch, "total_s": time.perf_counter() - t_start})
    path = _store(ctx.results, record, result.test_logits, result.test_labels, test.classes,
                  study_arrays(prep, validation_logits))
    shutil.rmtree(work, ignore_errors=True)
    log.info("run %s: top1=%.4f mean_per_class=%.4f → %s", spec.run_key, result.top1, result.mean_per_class_acc,
             path)
    return record


def _validation_logits(prep: _Prepared, test_cfg: TransformConfig, spec: RunSpec, ctx: RunContext,
                       work: Path) -> np.ndarray:
    """The fine-tuned model's logits on the task's validation split (CelebA's: the bias study fits its decision
    thresholds on them), through the test transform."""
    decoded = decode_images(prep.validation.dataset, test_cfg, ctx.extract_batch_size, ctx.num_workers,
                            work / "validation")
    logits, _ = evaluate(prep.loaded.model, decoded.batches(ctx.extract_batch_size, prep.device), prep.device,
                         spec.hparams.precision)
    return logits


def study_arrays(prep: _Prepared, validation_logits: np.ndarray | None) -> dict[str, np.ndarray]:
    """What a study's analysis needs beside a run's test predictions (``report.bias``), for a task whose images
    carry attributes (CelebA's 40): every test image's attributes and id, the train split's attribute
    co-occurrence counts (Y^T Y: the training correlations that bias amplification is measured against), the
    validation logits and labels (decision thresholds are fitted on them), the backdoor flags. Empty otherwise."""
    test, train, validation = prep.test, prep.train, prep.validation
    if getattr(test, "attributes", None) is None:
        return {}
    y = np.asarray(train.attributes, dtype=np.int64)
    arrays = {"attributes": np.asarray(test.attributes, dtype=np.int8),
              "attribute_names": np.asarray(test.attribute_names, dtype=str),
              "train_cooccurrence": y.T @ y, "train_count": np.int64(len(y))}
    if validation_logits is not None:
        arrays.update(validation_logits=np.asarray(validation_logits, dtype=np.float32),
                      validation_labels=np.asarray(validation.labels, dtype=np.int64))
    if test.backdoored is not None:
        arrays["backdoored"] = np.asarray(test.backdoored, dtype=bool)
    if test.ids is not None:
        arrays["ids"] = np.asarray(test.ids, dtype=str)
    return arrays


def _clear_work(work: Path) -> None:
    """Empty the run's work folder but for its lock and claim: removing a lock file that is held would let another
    process lock a new one and run the same run beside this one."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(work):
            if entry.name in (LOCK_FILE, CLAIM_FILE):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        work.rmdir()  # nothing left (a run without a claim): no folder either


_IDENTITY_DIGEST = re.compile(r"sha256:([0-9a-f]{64})$")


def _recheck_checkpoint(spec: RunSpec, prep: _Prepared, written_features: Iterable[Path] = ()) -> None:
    """The checkpoint file still has the digest the record will claim (``loaded.sha256``, the one the run key's
    identity names): else a one-line error and no record. Features this run extracted and cached under that
    digest are removed with it, since the bytes they came from may not be the ones the digest is of."""
    loaded = prep.loaded
    planned = _IDENTITY_DIGEST.search(spec.checkpoint.identity or "")
    now = sha256_file(loaded.path)
    if now == loaded.sha256 and (planned is None or planned.group(1) == now):
        return
    for path in written_features:
        Path(path).unlink(missing_ok=True)
    was = planned.group(1) if planned is not None and planned.group(1) != loaded.sha256 else loaded.sha256
    raise TransferbenchError(
        f"checkpoint {loaded.path} changed during the run (sha256 {was[:16]}… when the run began, {now[:16]}… "
        "now): no record written, since it would claim a digest the file no longer has; leave the file alone "
        "while runs use it, then run again (a changed file is a new run key)")


def _store(root: Path, record: RunRecord, test_logits, test_labels, class_names: list[str],
           arrays: dict[str, np.ndarray] | None = None) -> Path:
    """``write_record``, leaving nothing of this run behind when it fails (a full disk, a read-only root): a
    predictions file without its record reads as a run's leftover, and one beside an older record (``--force``)
    would pass for that record's. An older record whose predictions were replaced is removed with them."""
    folder = record_dir(root, record.run_key)
    predictions, result = folder / PREDICTIONS_FILE, result_path(root, record.run_key)
    before, record_before = _stamp(predictions), _stamp(result)
    try:
        return write_record(root, record, test_logits, test_labels, class_names, arrays)
    except BaseException:
        if _stamp(result) == record_before and _stamp(predictions) != before:  # our predictions, not our record
            predictions.unlink(missing_ok=True)
            if record_before is not None:
                result.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # when that left it empty: an empty run folder reads as a run that died
        raise


def _require_loader(spec: RunSpec) -> None:
    """--loader ffcv without FFCV installed: the install hint, before any data, checkpoint or file is touched."""
    if spec.hparams.loader == "ffcv":
        from .fastdata import require_ffcv

        require_ffcv()


def _metrics(task: TaskSpec, top1: float, mpc: float, extra: dict) -> Metrics:
    if task.multilabel:  # the numbers' meaning, where the record is read alone
        extra = {**extra, "targets": "multilabel", "top1_is": "mean attribute accuracy (p > 0.5)",
                 "mean_per_class_acc_is": "mean attribute balanced accuracy"}
    primary = top1 if task.metric == "top1" else mpc
    return Metrics(top1=top1, mean_per_class_acc=mpc, primary_metric=task.metric, primary=primary, extra=extra)


def _engine_info(spec: RunSpec, prep: _Prepared) -> dict:
    """``--engine semi-structured``: which Linear layers ran 2:4 sparse (and why the others did not), in which dtype
    (the same answer whether the features were extracted now or read from the cache)."""
    if spec.hparams.engine != "semi-structured":
        return {}
    from .finetune.semi_structured import plan_semi_structured

    return {"semi_structured": plan_semi_structured(prep.loaded.model, spec.hparams.precision).to_dict()}


def _record(spec: RunSpec, prep: _Prepared, ctx: RunContext, *, metrics: Metrics, sparsity: SparsityInfo,
            config: dict, curve: list, timings: dict) -> RunRecord:
    """The run's record: what the spec says, what the run measured, and where and how it ran."""
    loaded, ck = prep.loaded, spec.checkpoint
    device = str(prep.device)
    return RunRecord(
        run_key=spec.run_key, task=spec.task, method=ck.method, arch=ck.arch, mode=spec.mode, seed=spec.seed,
        target_sparsity=ck.sparsity, metrics=metrics, sparsity=sparsity,
        checkpoint=CheckpointInfo(identity=ck.identity, path=str(loaded.path), sha256=loaded.sha256,
                                  format=loaded.format, arch=loaded.arch,
                                  upstream_top1=prep.registered.upstream_top1 if prep.registered else None),
        config={"hparams": spec.hparams.to_dict(), "data": _data_info(prep.train, prep.test, prep.validation),
                "device": device,
                "compiled": ctx.compile, "cudnn_benchmark": ctx.cudnn_benchmark,
                "precision_policy": precision_policy(prep.device.type, spec.hparams.precision),
                "determinism": determinism_state(), **_engine_info(spec, prep), **config,
                **({"trackers": list(ctx.trackers)} if ctx.trackers else {})},
        curve=curve, timings=timings, hardware=hardware(device), versions=package_versions(),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
