"""Producing upstream checkpoints: train or prune a model with a method's recipe and register the result.

- ``recipes``: the shipped recipes, the method's knobs, the LR schedule, checkpoint names;
- ``data``: the upstream datasets;
- ``train``: the training loop and ``train_upstream`` (what ``transferbench upstream`` calls);
- ``options``, ``distributed``, ``state``: loader/precision switches, data-parallel jobs, the resume state;
- ``candidates``: one-shot candidates (CrAM), evaluation, writing and registering the checkpoint;
- ``from_dense``: one-shot candidates of a published dense model (``upstream --from``, the registry's one-shot rows);
- ``mini``: the offline mini-suite's models, trained by the explicit upstream stage of a sweep.
"""

import typing as _typing

from ..lazy import lazy_package as _lazy_package

# each public name's submodule, imported on first use: `upstream --help` reads LOADERS and PRECISIONS without torch
_lazy_package(__name__, {
    ".candidates": ("UpstreamResult", "evaluate"),
    ".datasets": ("upstream_datasets",),
    ".from_dense": ("oneshot_rows_missing", "prepare_oneshot_rows", "prune_published"),
    ".mini": ("MINI_ARCH", "MINI_DEFAULT_SPARSITY", "MINI_RECIPE", "ensure_mini_checkpoint", "mini_checkpoint_missing",
              "train_mini_checkpoints"),
    ".options": ("LoopOptions",),
    ".recipes": ("load_recipe", "lr_at"),
    ".train": ("dense_upstream", "train_loop", "train_upstream"),
})

if _typing.TYPE_CHECKING:
    from .candidates import UpstreamResult, evaluate
    from .datasets import upstream_datasets
    from .from_dense import oneshot_rows_missing, prepare_oneshot_rows, prune_published
    from .mini import (
        MINI_ARCH,
        MINI_DEFAULT_SPARSITY,
        MINI_RECIPE,
        ensure_mini_checkpoint,
        mini_checkpoint_missing,
        train_mini_checkpoints,
    )
    from .options import LoopOptions
    from .recipes import load_recipe, lr_at
    from .train import dense_upstream, train_loop, train_upstream

__all__ = [
    "MINI_ARCH", "MINI_DEFAULT_SPARSITY", "MINI_RECIPE", "LoopOptions", "UpstreamResult", "dense_upstream",
    "ensure_mini_checkpoint", "evaluate", "load_recipe", "lr_at", "mini_checkpoint_missing", "oneshot_rows_missing",
    "prepare_oneshot_rows", "prune_published", "train_loop", "train_mini_checkpoints", "train_upstream",
    "upstream_datasets",
]
