"""Atomic file writes and content hashes: a crash never leaves a partial file behind."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; collaborators on a cluster must read results
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def sha256_file(path: str | os.PathLike) -> str:
    """The file's sha256, memoised per (path, size, mtime) in this process and, for large files, across processes
    in ``digest_cache_path()`` (as git trusts its index's stat data): every ``sweep`` and ``status`` call
    identifies each checkpoint of a sweep by its digest, and re-reading gigabytes of checkpoints from a shared
    filesystem each time would cost minutes."""
    st = os.stat(path)
    return _sha256(os.path.realpath(path), st.st_size, st.st_mtime_ns)


PERSISTED_FROM_BYTES = 8 << 20  # smaller files hash faster than the cache file is read and rewritten
_DIGEST_CACHE_ENTRIES = 10_000


def digest_cache_path() -> Path:
    env = os.environ.get("TRANSFERBENCH_DIGEST_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "transferbench" / "sha256.json"


def _read_digest_cache(cache: Path) -> dict:
    try:
        entries = json.loads(cache.read_text())
    except (OSError, ValueError):  # absent, unreadable or corrupt: a cache is disposable
        return {}
    return entries if isinstance(entries, dict) else {}


def _remember_digest(path: str, size: int, mtime_ns: int, digest: str) -> None:
    cache = digest_cache_path()
    entries = _read_digest_cache(cache)
    entries[path] = {"size": size, "mtime_ns": mtime_ns, "sha256": digest}
    if len(entries) > _DIGEST_CACHE_ENTRIES:  # keep the newest entries (dicts keep insertion order)
        entries = dict(list(entries.items())[-_DIGEST_CACHE_ENTRIES:])
    # Concurrent jobs may each rewrite the file: the rename keeps it whole, and a lost entry is re-hashed. A
    # read-only home directory only makes the next call slower.
    with contextlib.suppress(OSError):
        write_json(cache, entries)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int, chunk: int = 1 << 20) -> str:
    persisted = size >= PERSISTED_FROM_BYTES
    if persisted:
        known = _read_digest_cache(digest_cache_path()).get(path)
        if isinstance(known, dict) and known.get("size") == size and known.get("mtime_ns") == mtime_ns:
            return str(known["sha256"])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    if persisted:
        _remember_digest(path, size, mtime_ns, digest)
    return digest
