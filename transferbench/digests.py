"""Content digests (sha256) of checkpoint files, remembered across calls and processes for large files."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from pathlib import Path

from .atomic import write_json


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
