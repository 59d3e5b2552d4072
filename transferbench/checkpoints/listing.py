"""What `transferbench checkpoints list` and `checkpoints show` print: the registry's rows filtered by method (names
and aliases resolved as every command resolves them) and architecture, with where each file is and whether it is
there. Torch-free, so listings start fast."""

from __future__ import annotations

import os
from typing import Any

from ..errors import TransferbenchError
from ..vocabulary import arch_family, format_sparsity, method_aliases, method_key, method_matches
from .lockfile import recorded_sha256
from .registry import CheckpointSpec, checkpoint_file, list_checkpoints, named_checkpoint

# The human table's columns (``--json`` has every field of ``checkpoint_row``).
TABLE_COLUMNS = ("method", "sparsity", "arch", "format", "upstream_top1", "top1_on", "name", "on_disk", "sha256",
                 "file", "url")
SHA256_SHOWN = 12  # hex digits of a digest in the table (``show`` and ``--json`` give all of them)


def filter_checkpoints(method: str | None = None, arch: str | None = None) -> list[CheckpointSpec]:
    """The registered rows of ``method`` (a registered name or an alias; an alias of several variants lists them
    all) for ``arch`` (an architecture or a family: ``resnet50`` also lists ``resnet50_rigl``). A filter that
    names nothing registered, or a method with no row for that arch, is a one-line error naming the flag and the
    known values."""
    rows = list_checkpoints()
    if arch is not None:
        archs = sorted({s.arch for s in rows} | {s.family for s in rows})
        if arch not in archs:
            raise TransferbenchError(f"no checkpoint for arch '{arch}' (--arch); known: {', '.join(archs)}")
        rows = [s for s in rows if s.arch == arch or (arch_family(arch) == arch and s.family == arch)]
    if method is None:
        return rows
    everywhere = {s.method for s in list_checkpoints()}
    if not method_matches(method, everywhere):
        aliases = sorted(a for a, names in method_aliases().items() if a not in everywhere and set(names) & everywhere)
        raise TransferbenchError(f"unknown method '{method}' (--method); known: {', '.join(sorted(everywhere))}; "
                                 f"aliases: {', '.join(aliases)}")
    meant = set(method_matches(method, {s.method for s in rows}))
    if not meant:
        elsewhere = sorted({s.arch for s in list_checkpoints() if s.method in method_matches(method, everywhere)})
        raise TransferbenchError(f"no '{method}' checkpoint for arch '{arch}'; '{method}' exists for: "
                                 f"{', '.join(elsewhere)} (--arch)")
    return [s for s in rows if s.method in meant]


def checkpoint_row(spec: CheckpointSpec, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """Every field of a registry row, plus where its file is (or is expected), whether it is there, the digest the
    checkpoint directory's lock file recorded for it on its first download (``sha256_recorded``, `checkpoints fetch`),
    the sparsity as printed, and what ``upstream_top1`` was measured on (``top1_on``: imagenet, or a model's own
    upstream set, e.g. the mini-suite's synthetic ``shapes``)."""
    path, present = checkpoint_file(spec, directory)
    row = spec.to_dict()
    row.update(sparsity_text=format_sparsity(spec.sparsity), top1_on=spec.upstream_data, public=spec.public,
               file=str(path), on_disk=present, sha256_recorded=recorded_sha256(path))
    return row


def table_cells(row: dict[str, Any]) -> tuple[str, ...]:
    """One row of the human table (``TABLE_COLUMNS``); sha256: the registry's pin, else ``lock:`` and the digest
    recorded on first download, shortened."""
    sha = row["sha256"] or (f"lock:{row['sha256_recorded']}" if row["sha256_recorded"] else "-")
    return (row["method"], row["sparsity_text"], row["arch"], row["format"],
            _top1_cell(row), row["top1_on"], row["name"],
            "yes" if row["on_disk"] else "no", sha[:SHA256_SHOWN + 5 * sha.startswith("lock:")], row["file"],
            row["url"] or "not public")


def _top1_cell(row: dict[str, Any]) -> str:
    """The upstream top-1 (%), marked "(chance)" for a model registered at chance (upstream/chance.py)."""
    if row["upstream_top1"] is None:
        return "-"
    return f"{row['upstream_top1']:.2f}" + (" (chance)" if row.get("at_chance") else "")


def show_checkpoint(name: str, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """``checkpoint_row`` of the row called ``name`` (the user's registration of it first), or a one-line error
    with the closest names."""
    spec = named_checkpoint(name)
    if spec is None:
        names = [s.name for s in list_checkpoints()]
        close = [n for n in names if method_key(name) in n] or names
        raise TransferbenchError(f"no checkpoint named '{name}'; e.g. {', '.join(close[:8])} "
                                 "(see `transferbench checkpoints list`)")
    return checkpoint_row(spec, directory)
