"""The job's side of the store: claims (flock + heartbeat) on the runs a process executes, failure files, and the
ledger of submitted jobs. Locks are ``flock`` on ``work/<key>/.lock``: the kernel releases them when a process dies,
so a requeued job can take them again, and whether a claim is alive is read off its lock (``claim_alive``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..atomic import write_json
from ..errors import TransferbenchError
from .layout import claim_path, failure_path, ledger_path, lock_path

HEARTBEAT_S = 30.0


class LockingUnsupported(TransferbenchError):
    """The filesystem under the results root refuses ``flock``."""


@contextlib.contextmanager
def claim_runs(keys: Iterable[str], out: Path, job_id: str,
               wait: Callable[[str, dict], None] | None = None) -> Iterator[list[str]]:
    """Lock the runs this process will execute; yields the keys it got (a run locked elsewhere is skipped).

    The lock is ``flock`` on ``work/<key>/.lock`` (released by the kernel if the process dies, so a requeued
    job can take it again); ``claim.json`` beside it says who holds it and carries the heartbeat. With ``wait``,
    a run locked elsewhere is waited for instead (``wait(key, holder's claim)`` is called once before blocking;
    the keys are then locked in sorted order, so two waiting processes cannot wait for each other).
    """
    keys = sorted(keys) if wait is not None else list(keys)
    held: list[tuple[str, int, int | None]] = []  # key, lock fd, inode of the claim file written
    try:
        for key in keys:
            fd = _lock_run(out, key, wait)
            if fd is None:
                continue
            held.append((key, fd, None))
            written = write_json(claim_path(out, key), {"job_id": job_id, "host": socket.gethostname(),
                                                        "pid": os.getpid(), "started_at": _now()})
            held[-1] = (key, fd, _inode(written))
            failure_path(out, key).unlink(missing_ok=True)
        with _Heartbeat([claim_path(out, k) for k, _, _ in held]):
            yield [k for k, _, _ in held]
    finally:
        for key, fd, inode in held:
            path = claim_path(out, key)
            if inode is not None and _inode(path) == inode:  # not a later holder's (our lock file was removed)
                path.unlink(missing_ok=True)
            os.close(fd)


NB_RETRIES, NB_RETRY_S = 5, 0.02  # a probe (claim_alive) holds a lock for microseconds: not a reason to skip


def _lock_run(out: Path, key: str, wait: Callable[[str, dict], None] | None) -> int | None:
    """The fd holding the run's lock, or None when another process holds it (and ``wait`` is None).

    The lock is checked to still be the file at its path once taken: a finished (or failed) run removes its work
    folder, lock file included, and a process that waited on the removed file would otherwise hold a lock nobody
    else can see.
    """
    lock = lock_path(out, key)
    while True:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            got = _flock_retrying(fd, lock)
            if not got and wait is not None:
                wait(key, _read_claim(claim_path(out, key)))
                got = _flock(fd, fcntl.LOCK_EX, lock)
        except BaseException:
            os.close(fd)
            raise
        if not got:
            os.close(fd)
            return None
        if _same_file(fd, lock):
            return fd
        os.close(fd)  # removed or replaced while we took it: lock the file that is there now


def _flock_retrying(fd: int, lock: Path) -> bool:
    for attempt in range(NB_RETRIES):
        if _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, lock):
            return True
        if attempt + 1 < NB_RETRIES:
            time.sleep(NB_RETRY_S)
    return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, at_path = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (at_path.st_dev, at_path.st_ino)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def lock_held(out: Path, key: str) -> bool | None:
    """Whether a process holds the run's lock: True, False (the lock is free), or None (cannot tell: no lock file,
    or a filesystem that refuses flock). Tested with a non-blocking shared flock, released at once; claimers
    retry a lock found taken for a moment (``NB_RETRIES``), so the test cannot make a job skip a run."""
    try:
        fd = os.open(lock_path(out, key), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # closing the only fd of the open file releases the shared lock
    return False


def claim_alive(out: Path, key: str, claim: dict, age_s: float, stale_after_s: float) -> bool:
    """Whether the process that wrote ``claim`` (its ``claim.json``, heartbeat ``age_s`` seconds old) still holds
    the run. On the claim's own host the lock says so whatever the heartbeat: a killed process's lock is free at
    once. Another host's lock cannot be tested from here: on NFS flock goes through the server's lock manager,
    and Lustre's ``localflock`` (or an NFS mount with ``local_lock``) keeps locks per node, so a lock that looks
    free here may be held there; for those only the heartbeat's age tells (fresh within ``stale_after_s``)."""
    if claim.get("host") == socket.gethostname():
        held = lock_held(out, key)
        if held is not None:
            return held
    return age_s < stale_after_s


def _read_claim(path: Path) -> dict:
    """The claim file's content ({} when absent, unreadable or not a JSON object)."""
    try:
        claim = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return claim if isinstance(claim, dict) else {}


class _Heartbeat:
    """Touch the claim files every HEARTBEAT_S seconds from a daemon thread while the runs execute."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.stop = paths, threading.Event()
        self.thread = threading.Thread(target=self._beat, name="transferbench-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            for path in self.paths:
                with contextlib.suppress(OSError):
                    os.utime(path)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def write_failure(out: Path, key: str, exc: BaseException, job_id: str) -> Path:
    return write_json(failure_path(out, key), {
        "run_key": key, "error": error_line(exc), "job_id": job_id, "host": socket.gethostname(), "failed_at": _now(),
        "traceback": "".join(traceback.format_exception(exc)),
    })


def error_line(exc: BaseException) -> str:
    """One line for a status table: the message (the last line of a worker's traceback), with its type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if any("Traceback" in x for x in lines) else lines[0]
    return line if line.split(":", 1)[0].endswith(("Error", "Exception")) else f"{type(exc).__name__}: {line}"


def append_ledger(out: Path, entries: list[dict]) -> None:
    """Append one line per submitted job; flock keeps concurrent submitters' lines whole."""
    path = ledger_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        _flock(fd, fcntl.LOCK_EX, path)
        if payload:
            os.write(fd, payload)
            os.fsync(fd)
    finally:
        os.close(fd)


def check_locking(out: Path) -> None:
    """Fail before anything runs or is submitted when the results root cannot be locked: jobs of every executor
    (debug too) lock their runs, and the ledger must record every submission. Tried on the ledger, so it
    creates an empty ``jobs/ledger.jsonl`` where there is none. A lock that holds on one node only (Lustre's
    ``localflock``) passes: that cannot be seen from one node."""
    append_ledger(out, [])


def _flock(fd: int, operation: int, path: Path) -> bool:
    """``flock``; False when LOCK_NB finds the lock taken. A filesystem without flock is a one-line error."""
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        if operation & fcntl.LOCK_NB:
            return False
        raise
    except OSError as exc:  # ENOSYS, ENOLCK, EOPNOTSUPP: Lustre mounted without -o flock, some NFS set-ups
        raise LockingUnsupported(
            f"cannot lock {path} ({os.strerror(exc.errno) if exc.errno else exc}): the filesystem under --results does "
            "not support flock, which keeps concurrent jobs from running a run twice and the ledger whole; put "
            "the results root on one that does (Lustre: mount with -o flock)") from None
    return True


def read_ledger(out: Path) -> dict[str, dict]:
    """The latest submission of each run key. Lines that are not a submission are skipped: a torn last line from
    a crashed submitter, a blank line, non-UTF-8 bytes, JSON that is not an object or has no list of run keys."""
    latest: dict[str, dict] = {}
    try:
        data = ledger_path(out).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return latest
    except OSError as exc:
        raise TransferbenchError(f"cannot read {ledger_path(out)} (--results): {exc.strerror or exc}; check that "
                                 "the file is readable by you") from None
    for line in data.splitlines():
        try:
            entry = json.loads(line.decode())
        except ValueError:  # UnicodeDecodeError is a ValueError
            continue
        keys = entry.get("run_keys") if isinstance(entry, dict) else None
        if isinstance(keys, list):
            latest.update((key, entry) for key in keys if isinstance(key, str))
    return latest


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
