"""Names a user gives that become parts of paths, and the check that a path stays inside its root.

A *name* is what a user (a flag, a sweep file, a recipe, a registry row) gives that ends up in a file or folder
name: a method, an architecture, a checkpoint's registry name or file name, a recipe's name. Every one is checked
against ONE pattern (``NAME_PATTERN``) where it is taken, before anything is written:

- ASCII letters, digits, ``.``, ``_`` and ``-``, at most ``MAX_NAME_LENGTH`` (100) characters;
- the first character is a letter, a digit or ``_``: no leading dot (``.``, ``..``, hidden files) and no leading
  ``-`` (a name printed in a suggested command, ``--method -x``, would read as a flag).

Non-ASCII letters (``é``) are refused on purpose: a name travels to other filesystems (macOS stores ``é`` decomposed,
so the run key read back differs from the one written, and the run looks missing forever), SLURM job names and
LaTeX tables. The length bound keeps a run key, three names plus about 70 characters, within the 255 bytes a file
name may have.

``inside`` is the second line of defence: the store's layout (``store.layout``) and the upstream and checkpoint
writers resolve each path they hand out (symlinks followed) and refuse one that lands outside its root, so a key
that would escape is refused even where a caller forgot to check a name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import TransferbenchError

MAX_NAME_LENGTH = 100
MAX_COMPONENT_BYTES = 255  # NAME_MAX of ext4, XFS, Lustre, NFS: the longest file name a folder can hold
NAME_PATTERN = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}")
NAME_RULE = (f"use letters, digits, '.', '_' or '-' (ASCII, at most {MAX_NAME_LENGTH} characters, not starting "
             "with '.' or '-')")
_NOT_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


def is_name(value: object) -> bool:
    """Whether ``value`` is a string that matches ``NAME_PATTERN`` as a whole."""
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


def check_name(value: object, what: str) -> str:
    """``value`` if it is a name, else a TransferbenchError naming ``what`` (the flag or file field that gave it,
    e.g. ``--method`` or ``sweep s.yaml: checkpoint method``) and the rule."""
    if not is_name(value):
        shown = repr(value) if isinstance(value, str) and len(value) <= 2 * MAX_NAME_LENGTH else \
            f"{str(value)[:40]!r}... ({len(str(value))} characters)"
        raise TransferbenchError(f"{what} {shown} is not a name: {NAME_RULE}")
    return value  # type: ignore[return-value]


def name_from(text: str, fallback: str = "file") -> str:
    """A name made of ``text`` (a file's stem): each run of other characters becomes ``_``, a leading ``.`` or
    ``-`` goes, and it is cut to ``MAX_NAME_LENGTH``; ``fallback`` when nothing is left."""
    name = _NOT_NAME_CHARACTERS.sub("_", text).lstrip(".-")[:MAX_NAME_LENGTH]
    return name if is_name(name) else fallback


def check_component(key: str, what: str) -> str:
    """``key`` if it is one plain path component (not empty, no ``/``, no NUL, not ``.`` or ``..``, at most
    ``MAX_COMPONENT_BYTES``): joined to a folder it cannot leave it lexically. A cheap check, for every path the
    store hands out (a results root holds 100k keys); a stray file of another name in the store is not refused by
    it, only a key that could escape or that no filesystem can hold."""
    if not isinstance(key, str) or key in ("", ".", "..") or "/" in key or "\0" in key or \
            (os.altsep is not None and os.altsep in key):
        raise TransferbenchError(f"{what} {key!r} is not a single file name: it would leave its folder; use "
                                 "letters, digits, '.', '_' or '-' in the names that make it")
    if len(key.encode(errors="surrogateescape")) > MAX_COMPONENT_BYTES:
        raise TransferbenchError(f"{what} {key[:60]!r}... is longer than the {MAX_COMPONENT_BYTES} bytes a file name "
                                 "may have; shorten the names that make it (method, arch)")
    return key


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "") -> Path:
    """``path`` if, with symlinks followed (``Path.resolve``), it is ``root`` or lies under it (``root`` resolved
    too, so a results root that is itself a link is fine); else a TransferbenchError naming both. ``what`` says
    which root (``results root (--results)``)."""
    path = Path(path)
    try:
        real_root, real = Path(root).resolve(), path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise TransferbenchError(f"cannot resolve {path} ({exc}); remove the symlink loop") from None
    if not real.is_relative_to(real_root):
        raise TransferbenchError(f"{path} resolves to {real}, outside the {what or 'folder'} {root}: a symlink "
                                 "points out of it; remove the link or give the folder it points to as the root")
    return path
