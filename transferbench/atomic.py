"""Atomic file writes: a crash never leaves a partial file behind."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)

# A temp file's name says who writes it (``.<name>.<host>.<pid>.<random>.tmp``), so that a later write of the same
# file can remove one a killed writer left: at once when that writer was on this host and is gone, after
# STALE_TEMP_S when it was elsewhere (a shared filesystem on a cluster: its pid says nothing here).
_HOST = socket.gethostname().replace("/", "_") or "host"
STALE_TEMP_S = 24 * 3600


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same directory and an atomic rename.

    On any failure (a full disk mid-write, an interrupt) the temp file is removed and ``path`` is as it was; an
    ``OSError`` that names no file is given ``path``, so its one-line message says which write failed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        with open(fd, "wb") as f:  # owns the descriptor from here: closed however the write ends
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; collaborators on a cluster must read results
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise
    remove_stale_temps(path)
    return path


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files a killed writer of ``path`` left beside it (a ``kill -9`` or a node lost mid-write
    runs no cleanup); a temp file of a writer that may still run is kept. Returns what was removed."""
    path = Path(path)
    head = f".{path.name}."
    removed = []
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(head) and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for entry in entries:
        if _writer_is_gone(entry, entry.name[len(head):-len(".tmp")]):
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(Path(entry.path))
    return removed


def _writer_is_gone(entry: os.DirEntry, who: str) -> bool:
    """Whether the writer of a temp file named ``<host>.<pid>.<random>`` (``who``) can no longer finish it."""
    host, _, rest = who.rpartition(".")[0].rpartition(".")
    pid = int(rest) if rest.isdigit() else 0
    if host == _HOST and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, another user's
            return False
        return False
    try:
        return time.time() - entry.stat().st_mtime > STALE_TEMP_S
    except OSError:
        return False


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` when it names no file (a write or fsync that hit a full disk names none)."""
    if exc.filename is None:
        exc.filename = str(path)
    return exc


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


def set_aside(path: str | os.PathLike, why: str) -> Path:
    """Rename a corrupt state or cache file to ``<name>.corrupt-<UTC time>`` beside it, so that the run starts
    over instead of failing on it at every rerun, and keep it for a post-mortem; one note line on stderr says so."""
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    print(f"note: {path} is unusable ({' '.join(why.split())[:200]}); set aside as {aside.name}, starting over",
          file=sys.stderr)
    return aside
