"""The job's side of the store: claims (flock + heartbeat) on the runs a process executes, failure files, and the
ledger of submitted jobs. Locks are ``flock`` on ``work/<key>/.lock``: the kernel releases them when a process dies,
so a requeued job can take them again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import threading
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..atomic import write_json
from ..errors import TransferbenchError
from .layout import claim_path, failure_path, ledger_path, lock_path

HEARTBEAT_S = 30.0


@contextlib.contextmanager
def claim_runs(keys: Iterable[str], out: Path, job_id: str) -> Iterator[list[str]]:
    """Lock the runs this process will execute; yields the keys it got (a run locked elsewhere is skipped).

    The lock is ``flock`` on ``work/<key>/.lock`` (released by the kernel if the process dies, so a requeued
    job can take it again); ``claim.json`` beside it says who holds it and carries the heartbeat.
    """
    held: list[tuple[str, int]] = []
    try:
        for key in keys:
            lock = lock_path(out, key)
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                if not _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, lock):
                    os.close(fd)
                    continue
            except TransferbenchError:
                os.close(fd)
                raise
            held.append((key, fd))
            write_json(claim_path(out, key), {"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(),
                                              "started_at": _now()})
            failure_path(out, key).unlink(missing_ok=True)
        with _Heartbeat([claim_path(out, k) for k, _ in held]):
            yield [k for k, _ in held]
    finally:
        for key, fd in held:
            claim_path(out, key).unlink(missing_ok=True)
            os.close(fd)


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
        raise TransferbenchError(
            f"cannot lock {path} ({os.strerror(exc.errno) if exc.errno else exc}): the filesystem under --results does "
            "not support flock, which keeps concurrent jobs from running a run twice and the ledger whole; put "
            "the results root on one that does (Lustre: mount with -o flock)") from None
    return True


def read_ledger(out: Path) -> dict[str, dict]:
    """The latest submission of each run key (a torn last line from a crashed submitter is ignored)."""
    latest: dict[str, dict] = {}
    path = ledger_path(out)
    if not path.is_file():
        return latest
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        for key in entry.get("run_keys", []):
            latest[key] = entry
    return latest




def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
