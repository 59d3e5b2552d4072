"""The one exception type users see, and the one-line form of an operating-system error.

A command ends in ``error: <message>`` (exit 2) for bad input (``TransferbenchError``) and for a failure of the
file system under it (``OSError``: a read-only or full disk, a path through a file, no permission), never in a
traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


class TransferbenchError(Exception):
    """Bad input or an unrecoverable run condition, reported to the user as one line.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback.
    Messages must name the offending file/flag and say how to fix it.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


# What to do about each errno a user can cause (or cure) by where they point the command.
_FIXES = {
    errno.ENOSPC: "the disk is full: free some space (or point the command at another disk) and rerun; finished "
                  "epochs, cached features and records are kept",
    errno.EDQUOT: "the disk quota is used up: free some space (or point the command at another disk) and rerun",
    errno.EROFS: "the file system is read-only: point the command at a writable folder (e.g. --results DIR)",
    errno.EACCES: "no permission: point the command at a folder you may write (e.g. --results DIR) or fix its "
                  "permissions",
    errno.EPERM: "not permitted: point the command at an ordinary folder you may write (e.g. --results DIR)",
    errno.ENOTDIR: "a part of this path is a file, not a folder: point the command at a folder",
    errno.EISDIR: "this is a folder where a file was expected: move it away or point the command elsewhere",
    errno.ENOENT: "no such file or folder (a virtual file system such as /proc or /sys cannot hold results): "
                  "check the path",
    errno.ENAMETOOLONG: "the path is too long for the file system: use a shorter folder",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer --workers",
    errno.EIO: "the disk reported an input/output error: check the disk, then rerun",
}


# errnos of the disk or the system rather than of a file's content: reading a truncated torch file raises OSError
# too (EINVAL), and that one means the file is corrupt
_DISK_ERRNOS = frozenset({errno.EIO, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.ENOTDIR,
                          errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                          errno.ESTALE, errno.ENXIO})


def is_disk_error(exc: BaseException) -> bool:
    """Whether ``exc``, raised while reading a file, is the disk's or the system's fault, not the content's."""
    return isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS


def describe_os_error(exc: OSError, where: str | None = None) -> str:
    """``<path>: <reason> — <fix>`` for an ``OSError`` (the paths it names, or ``where``; its errno's text; what
    to do)."""
    paths = [where] if where else [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = _FIXES.get(exc.errno, "check the path, the disk and the permissions, then rerun")
    where = f"{' -> '.join(paths)}: " if paths else ""
    return " ".join(f"{where}{reason} — {fix}".split())


def require_writable_folder(path: Path, flag: str) -> None:
    """Refuse, before any work, a folder the command could not write into: one that is a file, lies under a file,
    on a read-only or virtual file system, or without permission. Writes nothing, not even a folder's time stamp:
    the probe is an unnamed (O_TMPFILE) file in the folder, or in its nearest existing ancestor when the folder is
    yet to be made (/proc and /sys refuse it)."""
    path = Path(path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if os.path.lexists(p))
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        inside = f" (in {existing})" if existing != path else ""
        raise TransferbenchError(f"{flag} {describe_os_error(exc, where=f'{path}{inside}')}") from None


__all__ = ["TransferbenchError", "describe_os_error", "is_disk_error", "require_writable_folder"]
