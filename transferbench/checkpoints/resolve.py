"""From what a user names (method + sparsity [+ arch], or a file) to the CheckpointRef a RunSpec carries."""

from __future__ import annotations

from pathlib import Path

from ..digests import sha256_file
from ..errors import TransferbenchError
from ..runspec import CheckpointRef
from ..vocabulary import normalize_sparsity
from .load import peek_arch
from .registry import CheckpointSpec, find_checkpoint, list_checkpoints, local_path


def resolve_checkpoint(method: str | None, sparsity: float | None, arch: str | None,
                       checkpoint: str | Path | None, checkpoint_dir: Path | None = None) -> CheckpointRef:
    """A registry entry (method + sparsity [+ arch]) or a local file (--checkpoint PATH)."""
    if checkpoint is not None:
        return _local_file(method, sparsity, arch, Path(checkpoint).expanduser())
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


def _local_file(method: str | None, sparsity: float | None, arch: str | None, path: Path) -> CheckpointRef:
    if not path.is_file():
        raise TransferbenchError(f"checkpoint file {path} does not exist (--checkpoint)")
    if sparsity is None:
        raise TransferbenchError(
            f"--checkpoint {path} needs --sparsity (its registered/target sparsity, e.g. 0.9), which is "
            "checked against the measured sparsity"
        )
    if arch is None:
        arch = peek_arch(path)
        if arch is None:
            raise TransferbenchError(f"{path} does not name its architecture; pass --arch (e.g. resnet50)")
    return CheckpointRef(method=method or "custom", sparsity=normalize_sparsity(sparsity), arch=arch,
                         identity=f"sha256:{sha256_file(path)}", path=str(path))


def registered_spec(ref: CheckpointRef) -> CheckpointSpec | None:
    """The registry row a run's checkpoint came from (by name), or None for --checkpoint PATH."""
    if ref.identity.startswith("sha256:"):
        return None
    name = ref.identity.partition("@")[0]
    return next(s for s in reversed(list_checkpoints()) if s.name == name)  # local.yaml rows last, newest last
