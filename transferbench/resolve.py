"""From what a user names for one run (task, mode, seed, an upstream checkpoint, hyper-parameter overrides) to
its RunSpec: what `transferbench run` does before it runs, callable the same way from Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoints import resolve_checkpoint
from .runspec import RunSpec, make_spec, resolve_hparams
from .tasks import detect_layout, get_task, load_split
from .upstream import ensure_mini_checkpoint


def resolve_spec(task: str, mode: str = "linear", seed: int = 21, *, method: str | None = None,
                 sparsity: float | None = None, arch: str | None = None, checkpoint: str | Path | None = None,
                 checkpoint_dir: Path | None = None, data_root: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> RunSpec:
    """The RunSpec of one run, checked cheapest first so that a mistake costs no download or training: the
    hyper-parameters (and the DeepSparse environment they may ask for), then a paper task's data under
    ``data_root``, then the checkpoint: ``checkpoint`` (a file), else the registry's ``method`` at ``sparsity``
    [for ``arch``]. For a mini-task, a method's mini-suite upstream model is trained now when none is registered
    (seconds to minutes on a CPU; see ``upstream.ensure_mini_checkpoint``)."""
    task_spec = get_task(task)
    hparams = resolve_hparams(mode, task_spec.full_lr, overrides)  # the spec's own check, before any other work
    if hparams.engine == "deepsparse":
        from .finetune.sparse_cpu import deepsparse_python

        deepsparse_python()  # raises when its environment is missing
    if task_spec.kind == "paper":
        if data_root is None:
            load_split(task_spec, "test", None)  # raises: where the data is expected and how to get it
        detect_layout(task_spec, data_root)
    if task_spec.kind == "mini" and checkpoint is None and method is not None:
        ref = ensure_mini_checkpoint(method, sparsity, arch)
    else:
        ref = resolve_checkpoint(method, sparsity, arch, checkpoint, checkpoint_dir)
    return make_spec(task_spec.name, mode, seed, ref, overrides)
