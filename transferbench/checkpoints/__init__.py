"""Upstream checkpoints: the registry (published table + user-registered files) and a format-agnostic loader."""

import typing as _typing

from ..lazy import lazy_package as _lazy_package

# each public name's submodule, imported on first use: `checkpoints list` reads the registry without torch
_lazy_package(__name__, {
    ".formats": ("FORMATS", "DecodedCheckpoint", "decode_checkpoint", "detect_format", "str_effective_weight"),
    ".load": ("LoadedCheckpoint", "infer_arch", "load_checkpoint", "load_registered", "peek_arch"),
    ".registry": ("CheckpointSpec", "arch_family", "checkpoint_dir", "find_checkpoint", "format_sparsity",
                  "list_checkpoints", "local_path", "lookup_checkpoint", "normalize_sparsity", "register_local"),
    ".resolve": ("registered_spec", "resolve_checkpoint"),
    ".save": ("save_checkpoint", "wrapped_state_dict"),
})

if _typing.TYPE_CHECKING:
    from .formats import FORMATS, DecodedCheckpoint, decode_checkpoint, detect_format, str_effective_weight
    from .load import LoadedCheckpoint, infer_arch, load_checkpoint, load_registered, peek_arch
    from .registry import (
        CheckpointSpec,
        arch_family,
        checkpoint_dir,
        find_checkpoint,
        format_sparsity,
        list_checkpoints,
        local_path,
        lookup_checkpoint,
        normalize_sparsity,
        register_local,
    )
    from .resolve import registered_spec, resolve_checkpoint
    from .save import save_checkpoint, wrapped_state_dict

__all__ = [
    "FORMATS",
    "CheckpointSpec",
    "DecodedCheckpoint",
    "LoadedCheckpoint",
    "arch_family",
    "checkpoint_dir",
    "decode_checkpoint",
    "detect_format",
    "find_checkpoint",
    "format_sparsity",
    "infer_arch",
    "list_checkpoints",
    "load_checkpoint",
    "load_registered",
    "local_path",
    "lookup_checkpoint",
    "normalize_sparsity",
    "peek_arch",
    "register_local",
    "registered_spec",
    "resolve_checkpoint",
    "save_checkpoint",
    "str_effective_weight",
    "wrapped_state_dict",
]
