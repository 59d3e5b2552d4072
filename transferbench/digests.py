"""Content digests (sha256) of checkpoint files, remembered across calls and processes for large files.

A remembered digest is trusted only while the file's whole stat identity is unchanged: device, inode, size,
mtime_ns and ctime_ns. mtime alone is not enough: a file rewritten in place can have its mtime set back
(``os.utime``, ``touch -r``), and ``cp -p`` gives a new file the old one's mtime. ctime cannot be set by a user: any
write, ``utime`` or ``chmod`` moves it to the present. As git does for its index ("racy git"), a digest is not
remembered while the file's times are within ``RACY_S`` of the moment hashing began: a write in the same clock tick
as the hashing would leave the times unchanged (filesystem timestamps are coarse: a jiffy locally, up to a second or
two over some network filesystems).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

from .atomic import write_json

PERSISTED_FROM_BYTES = 8 << 20  # smaller files hash faster than the cache file is read and rewritten
RACY_S = 2.0
_DIGEST_CACHE_ENTRIES = 10_000
_MEMO_ENTRIES = 256


class FileIdentity(NamedTuple):
    """What must be unchanged for a remembered digest of a file to stand for its content."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_memo: dict[tuple[str, FileIdentity], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """The file's sha256, remembered per (real path, ``FileIdentity``) in this process and, for large files,
    across processes in ``digest_cache_path()``: every ``sweep`` and ``status`` call identifies each checkpoint of a
    sweep by its digest, and re-reading gigabytes of checkpoints from a shared filesystem each time would cost
    minutes. Any difference in the identity (an in-place rewrite, a ``cp -p``, a restored mtime) re-hashes."""
    real = os.path.realpath(path)
    identity = FileIdentity.of(os.stat(real))
    known = _memo.get((real, identity))
    if known is not None:
        return known
    persisted = identity.size >= PERSISTED_FROM_BYTES
    if persisted and (cached := _cached_digest(real, identity)) is not None:
        _remember_in_process(real, identity, cached)
        return cached
    started_ns = time.time_ns()
    digest, after = _hash(real)
    # Remembered only when the file did not change while it was read, and not within a clock tick of it
    if after == identity and started_ns - max(identity.mtime_ns, identity.ctime_ns) > RACY_S * 1e9:
        _remember_in_process(real, identity, digest)
        if persisted:
            _remember_digest(real, identity, digest)
    return digest


def clear_memo() -> None:
    """Forget this process's digests (tests; a long-lived process that wants every file read again)."""
    _memo.clear()


def _hash(path: str, chunk: int = 1 << 20) -> tuple[str, FileIdentity]:
    """The digest of the file's bytes, and its identity once they were read (from the same open file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
        return h.hexdigest(), FileIdentity.of(os.fstat(f.fileno()))


def _remember_in_process(path: str, identity: FileIdentity, digest: str) -> None:
    if len(_memo) >= _MEMO_ENTRIES:
        _memo.pop(next(iter(_memo)))
    _memo[(path, identity)] = digest


def digest_cache_path() -> Path:
    env = os.environ.get("TRANSFERBENCH_DIGEST_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "transferbench" / "sha256.json"


def _read_digest_cache(cache: Path) -> dict:
    try:
        entries = json.loads(cache.read_bytes())
    except (OSError, ValueError):  # absent, unreadable or corrupt: a cache is disposable
        return {}
    return entries if isinstance(entries, dict) else {}


def _cached_digest(path: str, identity: FileIdentity) -> str | None:
    """The digest the cache holds for ``path`` when its entry was made for this very identity (an entry of an
    older layout, without inode or ctime, never matches)."""
    known = _read_digest_cache(digest_cache_path()).get(path)
    if not isinstance(known, dict) or not isinstance(known.get("sha256"), str):
        return None
    return known["sha256"] if all(known.get(k) == v for k, v in identity._asdict().items()) else None


def _remember_digest(path: str, identity: FileIdentity, digest: str) -> None:
    cache = digest_cache_path()
    entries = _read_digest_cache(cache)
    entries.pop(path, None)  # re-inserted last: the newest entries are the ones kept
    entries[path] = {**identity._asdict(), "sha256": digest}
    if len(entries) > _DIGEST_CACHE_ENTRIES:  # keep the newest entries (dicts keep insertion order)
        entries = dict(list(entries.items())[-_DIGEST_CACHE_ENTRIES:])
    # Concurrent jobs may each rewrite the file: the rename keeps it whole, and a lost entry is re-hashed. A
    # read-only home directory only makes the next call slower.
    with contextlib.suppress(OSError):
        write_json(cache, entries)
