"""From what a user names (method + sparsity [+ arch], or a file) to the CheckpointRef a RunSpec carries."""

from __future__ import annotations

import logging
from pathlib import Path

from ..digests import sha256_file
from ..errors import TransferbenchError
from ..names import check_name
from ..runspec import CheckpointRef
from ..vocabulary import format_sparsity, normalize_sparsity
from .load import peek_arch, peek_sparsity
from .lockfile import verify_recorded
from .registry import (
    CheckpointSpec,
    file_identity,
    find_checkpoint,
    list_checkpoints,
    local_path,
    oneshot_source,
    prepared_candidate,
)

log = logging.getLogger("transferbench")


def resolve_checkpoint(method: str | None, sparsity: float | None, arch: str | None,
                       checkpoint: str | Path | None, checkpoint_dir: Path | None = None,
                       trained_for: str | None = None) -> CheckpointRef:
    """A registry entry (method + sparsity [+ arch]) or a local file (--checkpoint PATH).

    A one-shot row (a published dense CrAM file, pruned per sparsity) resolves to the candidate `transferbench
    upstream --from` prepared from that row's file at its sparsity and arch; with none prepared yet, a one-line
    error gives that command. The identity is always the file's own: ``<row name>@sha256:<digest of the file>``.
    """
    if checkpoint is not None:
        return _local_file(method, sparsity, arch, Path(checkpoint).expanduser())
    if method is None or sparsity is None:
        raise TransferbenchError("name an upstream checkpoint with --method and --sparsity, or --checkpoint PATH")
    spec = find_checkpoint(method, sparsity, arch, trained_for)  # trained_for: a study's model (find_checkpoint)
    if spec.oneshot:  # a published dense file to prune: the candidate `upstream --from` made of it, if any
        spec = _prepared(spec)
    return registered_ref(spec, checkpoint_dir)


def registered_ref(spec: CheckpointSpec, checkpoint_dir: Path | None = None) -> CheckpointRef:
    """The CheckpointRef of the registry row ``spec``: its file (``local_path``) and the identity
    ``<row name>@sha256:<digest of the file>``."""
    path = local_path(spec, checkpoint_dir)
    # The file's digest is part of the identity: a re-trained or re-downloaded file under the same registry name
    # is a different run (sha256_file remembers a digest by path, device, inode, size, mtime and ctime: a file is
    # read once, and again when anything about it changed).
    digest = sha256_file(path)
    verify_recorded(spec, path, digest)  # a published file: its pinned sha256, or the one fetch recorded
    return CheckpointRef(method=spec.method, sparsity=spec.sparsity, arch=spec.arch,
                         identity=file_identity(spec.name, digest), path=str(path))


def prepare_command(specs: list[CheckpointSpec]) -> str:
    """The `transferbench upstream --from` command that prepares the candidates of one-shot rows (of one source)."""
    source = oneshot_source(specs[0])
    sparsities = " ".join(f"{s:g}" for s in sorted({spec.sparsity for spec in specs}))
    return (f"transferbench upstream --method {specs[0].method} --from {source.name} --sparsity {sparsities} "
            f"--dataset imagenet --data-root IMAGENET")


def _prepared(spec: CheckpointSpec) -> CheckpointSpec:
    candidate = prepared_candidate(spec)
    if candidate is None:
        source = oneshot_source(spec)
        raise TransferbenchError(
            f"{spec.label} is the dense {source.name} pruned one-shot and BN-recalibrated, and none is prepared yet: "
            f"run `{prepare_command([spec])}` first (IMAGENET: the folder with train/ and val/; the dense file "
            f"{source.filename} in the checkpoint directory)"
        )
    return candidate


def _local_file(method: str | None, sparsity: float | None, arch: str | None, path: Path) -> CheckpointRef:
    if not path.is_file():
        raise TransferbenchError(f"checkpoint file {path} does not exist (--checkpoint)")
    if arch is None:
        arch = peek_arch(path)
        if arch is None:
            raise TransferbenchError(f"{path} does not name its architecture; pass --arch (e.g. resnet50)")
        check_name(arch, f"{path} names its architecture as")  # read from the file: part of the run key
    check_name(method or "custom", "--method")
    if sparsity is None:  # nothing to check the file against: what it measures is its target (and in its run key)
        sparsity = peek_sparsity(path, arch, method)
        log.info("--checkpoint %s: no --sparsity given; it measures %s over the weights %s prunes on %s, its "
                 "target from here on", path, format_sparsity(sparsity), method or "a method", arch)
    return CheckpointRef(method=method or "custom", sparsity=normalize_sparsity(sparsity), arch=arch,
                         identity=file_identity(None, sha256_file(path)), path=str(path))


def registered_spec(ref: CheckpointRef) -> CheckpointSpec | None:
    """The registry row a run's checkpoint came from (by name), or None for --checkpoint PATH."""
    if ref.identity.startswith("sha256:"):
        return None
    name = ref.identity.partition("@")[0]
    return next(s for s in reversed(list_checkpoints()) if s.name == name)  # local.yaml rows last, newest last
