"""From what a user names for one run (task, mode, seed, an upstream checkpoint, hyper-parameter overrides) to
its RunSpec: what `transferbench run` does before it runs, callable the same way from Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoints import resolve_checkpoint
from .checkpoints.registry import method_for_arch
from .names import check_name
from .runspec import RunSpec, check_task_hparams, make_spec, resolve_hparams
from .tasks import detect_layout, get_task, load_split
from .upstream import ensure_mini_checkpoint


def resolve_spec(task: str, mode: str = "linear", seed: int = 21, *, method: str | None = None,
                 sparsity: float | None = None, arch: str | None = None, checkpoint: str | Path | None = None,
                 checkpoint_dir: Path | None = None, data_root: Path | None = None,
                 overrides: dict[str, Any] | None = None, train_missing: bool = False) -> RunSpec:
    """The RunSpec of one run, checked cheapest first so that a mistake costs no download or training: ``method``
    and ``arch`` are names (``names.check_name``: they become part of the run key, a folder name), then the
    hyper-parameters (and the DeepSparse environment they may ask for), then a paper task's data under
    ``data_root``, then the checkpoint: ``checkpoint`` (a file), else the registry's ``method`` at ``sparsity``
    [for ``arch``]. For a mini-task, a method's mini-suite upstream model is trained now when none is registered
    and ``train_missing`` asks for it (seconds to minutes on a CPU; see ``upstream.ensure_mini_checkpoint``)."""
    for value, flag in ((method, "--method"), (arch, "--arch")):  # parts of the run key: first, before any work
        if value is not None:
            check_name(value, flag)
    task_spec = get_task(task)
    hparams = resolve_hparams(mode, task_spec.full_lr, overrides)  # the spec's own check, before any other work
    check_task_hparams(task_spec, mode, hparams)
    if hparams.engine == "deepsparse":
        from .finetune.sparse_cpu import deepsparse_python

        deepsparse_python()  # raises when its environment is missing
    if method is not None and checkpoint is None:  # a misspelt or ambiguous name costs no data check either
        method = _method_name(method, arch, task_spec.kind == "mini")
    if task_spec.kind != "mini":  # a paper task or a study's (CelebA): its data must be there
        if data_root is None:
            load_split(task_spec, "test", None)  # raises: where the data is expected and how to get it
        detect_layout(task_spec, data_root)
    if mode == "evaluate":  # a model trained on this very task (the bias study's, from scratch): its own head
        from .upstream import MINI_ARCH

        ref = resolve_checkpoint(method, sparsity, arch or (MINI_ARCH if task_spec.kind == "mini" else None),
                                 checkpoint, checkpoint_dir, trained_for=task_spec.name)
    elif task_spec.kind == "mini" and checkpoint is None and method is not None:
        ref = ensure_mini_checkpoint(method, sparsity, arch, train_missing=train_missing)
    else:
        ref = resolve_checkpoint(method, sparsity, arch, checkpoint, checkpoint_dir)
    return make_spec(task_spec.name, mode, seed, ref, overrides)


def _method_name(method: str, arch: str | None, mini: bool) -> str:
    """The registered (or, for a mini-task, also trainable) method ``method`` stands for with the run's arch: the
    registry's one resolution (``checkpoints.registry.method_for_arch``): ``rigl`` on resnet_tiny is the mini-suite's
    rigl, on resnet50 a choice between rigl_erk1x and rigl_erk5x; ``lth`` there is lth_t."""
    if mini:
        from .pruning.factory import METHODS
        from .upstream import MINI_ARCH

        return method_for_arch(method, arch or MINI_ARCH, trainable=METHODS)
    return method_for_arch(method, arch)
