"""Where each run of a sweep stands, read from files in the results root (never from ``sacct``).

    <out>/runs/<key>/result.json     done (written last and atomically by the runner)
    <out>/work/<key>/claim.json      running: a job holds the run's lock; the job touches the file every
                                     HEARTBEAT_S seconds, so a claim left by a killed job goes stale
    <out>/failures/<key>.json        failed: the first line of the error, the traceback, the job id
    <out>/jobs/ledger.jsonl          submitted: one line per job (its runs, id, executor, log file)

A failure or an old claim is superseded by a later submission of the same run (then it is "queued" while its
job is alive). A submitted run whose job is gone without a record, claim or failure file is "missing", with
the job's last log line as the reason, and a plain ``sweep`` submits it again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_json
from ..errors import TransferbenchError
from ..records import RESULT_FILE, read_record

DONE, RUNNING, QUEUED, FAILED, MISSING = "done", "running", "queued", "failed", "missing"
STATES = (DONE, RUNNING, QUEUED, FAILED, MISSING)
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
CLAIM_FILE = "claim.json"
LEDGER = Path("jobs") / "ledger.jsonl"


@dataclass(frozen=True)
class RunState:
    state: str
    detail: str = ""
    job_id: str = ""


def failure_path(out: Path, key: str) -> Path:
    return Path(out) / "failures" / f"{key}.json"


def claim_path(out: Path, key: str) -> Path:
    return Path(out) / "work" / key / CLAIM_FILE


# ---------------------------------------------------------------------------------------------- the job's side


@contextlib.contextmanager
def claim_runs(keys: Iterable[str], out: Path, job_id: str) -> Iterator[list[str]]:
    """Lock the runs this process will execute; yields the keys it got (a run locked elsewhere is skipped).

    The lock is ``flock`` on ``work/<key>/.lock`` (released by the kernel if the process dies, so a requeued
    job can take it again); ``claim.json`` beside it says who holds it and carries the heartbeat.
    """
    held: list[tuple[str, int]] = []
    try:
        for key in keys:
            lock = Path(out) / "work" / key / ".lock"
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


def command_error_line(output: str, default: str) -> str:
    """The line of a failed SLURM command's stderr that says why: the last one naming an error, else the last
    non-blank one. Not the first: sbatch and squeue print warnings (a deprecated option, a site's notice)
    before the error, and a one-line report that quotes the warning hides the cause."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else default)


# ---------------------------------------------------------------------------------------------- the submitter's side


def append_ledger(out: Path, entries: list[dict]) -> None:
    """Append one line per submitted job; flock keeps concurrent submitters' lines whole."""
    path = Path(out) / LEDGER
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
            f"cannot lock {path} ({os.strerror(exc.errno) if exc.errno else exc}): the filesystem under --out does "
            "not support flock, which keeps concurrent jobs from running a run twice and the ledger whole; put "
            "the results root on one that does (Lustre: mount with -o flock)") from None
    return True


def read_ledger(out: Path) -> dict[str, dict]:
    """The latest submission of each run key (a torn last line from a crashed submitter is ignored)."""
    latest: dict[str, dict] = {}
    path = Path(out) / LEDGER
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


@dataclass(frozen=True)
class SlurmQueue:
    """The jobs ``squeue`` lists for this user (array tasks as ``A_i``), or why it could not say."""

    jobs: frozenset[str] | None
    problem: str = ""


def live_slurm_jobs() -> SlurmQueue:
    """This user's queued and running jobs (``squeue -u``: other users' jobs are not ours to wait for)."""
    if shutil.which("squeue") is None:
        return SlurmQueue(None, "squeue is not on PATH")
    try:
        listed = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"], capture_output=True,
                                text=True, timeout=60)
    except (subprocess.SubprocessError, OSError) as exc:
        return SlurmQueue(None, f"squeue failed: {error_line(exc)}")
    if listed.returncode != 0:
        reason = command_error_line(listed.stderr, "no message")
        return SlurmQueue(None, f"squeue failed (exit {listed.returncode}): {reason}")
    return SlurmQueue(frozenset(line.strip() for line in listed.stdout.splitlines() if line.strip()))


def _ended(entry: dict) -> bool:
    """submitit writes the job's result file (a value or an error) when the job ends for good, not on a requeue."""
    stdout, job_id = entry.get("stdout"), str(entry.get("job_id", ""))
    return bool(stdout and job_id) and (Path(stdout).parent / f"{job_id}_0_result.pkl").exists()


def _liveness(entry: dict, queue: SlurmQueue | None) -> tuple[bool, str]:
    """Whether the entry's job may still run its runs, and why that is not confirmed ("" when it is).

    The result file comes first for every executor: it is the one sign that holds on any host, whereas a local
    job's id is its pid, which the system hands to another process once the job has ended.
    """
    if _ended(entry):
        return False, ""
    executor, job_id = entry.get("executor"), str(entry.get("job_id", ""))
    if executor == "slurm":
        if queue is None or queue.jobs is None:  # no squeue: only the job folder can tell, and it says nothing yet
            return True, "no squeue"
        return job_id in queue.jobs or job_id.split("_")[0] in queue.jobs, ""
    if executor == "local" and job_id.isdigit():
        host = entry.get("host")
        if host and host != socket.gethostname():  # a pid says nothing about another machine's processes
            return True, f"local job on {host}"
        try:
            os.kill(int(job_id), 0)
        except ProcessLookupError:
            return False, ""
        except PermissionError:  # a process of another user: alive, though perhaps not ours
            return True, ""
        return True, ""
    return False, ""


def run_states(out: Path, keys: Iterable[str], *, now: float | None = None, stale_after_s: float = STALE_AFTER_S,
               notes: list[str] | None = None) -> dict[str, RunState]:
    """The state of every key; one directory listing per folder, so 100k keys take well under a second.

    A run is done when its record is complete (``read_record``, the check jobs make before they start). What
    limits the answer (no ``squeue``) is appended to ``notes``.
    """
    out = Path(out)
    now = time.time() if now is None else now
    keys = list(keys)
    with_dir = _listing(out / "runs")
    working = _listing(out / "work")
    failed = {name[:-5] for name in _listing(out / "failures") if name.endswith(".json")}
    ledger = read_ledger(out) if (out / LEDGER).is_file() else {}
    slurm_jobs = live_slurm_jobs() if any(e.get("executor") == "slurm" for e in ledger.values()) else None
    if slurm_jobs is not None and slurm_jobs.problem and notes is not None:
        notes.append(f"{slurm_jobs.problem}: SLURM jobs of {out / LEDGER} count as queued until submitit's result "
                     "file shows they ended, so cancelled or killed jobs are not seen as gone; run `status` where "
                     "squeue works (a login node)")
    states: dict[str, RunState] = {}
    unconfirmed_hosts: set[str] = set()
    for key in keys:
        if key in with_dir and read_record(out / "runs" / key / RESULT_FILE) is not None:
            states[key] = RunState(DONE)
            continue
        submitted = ledger.get(key)
        submitted_at = _timestamp(submitted["submitted_at"]) if submitted else None
        claim = _claim(out, key) if key in working else None
        if claim is not None:
            fresh = now - claim[1] < stale_after_s
            if fresh:
                states[key] = RunState(RUNNING, f"on {claim[0].get('host', '?')}", str(claim[0].get("job_id", "")))
                continue
        alive, unconfirmed = _liveness(submitted, slurm_jobs) if submitted is not None else (False, "")
        if key in failed:
            failure = _read_json(failure_path(out, key))
            failed_at = _timestamp(failure.get("failed_at", "")) if failure else None
            if not (submitted_at and failed_at and submitted_at > failed_at and alive):
                states[key] = RunState(FAILED, failure.get("error", "?") if failure else "unreadable failure file",
                                       str(failure.get("job_id", "")) if failure else "")
                continue
        if submitted is not None and alive:
            if unconfirmed.startswith("local job on "):
                unconfirmed_hosts.add(str(submitted.get("host")))
            detail = f" (not confirmed: {unconfirmed})" if unconfirmed else ""
            states[key] = RunState(QUEUED, f"job {submitted['job_id']}{detail}", str(submitted["job_id"]))
        elif claim is not None:
            states[key] = RunState(MISSING, f"lost: job {claim[0].get('job_id', '?')} stopped sending heartbeats "
                                            f"{(now - claim[1]) / 60:.0f} min ago", str(claim[0].get("job_id", "")))
        elif submitted is not None:
            states[key] = RunState(MISSING, f"job {submitted['job_id']} ended without a record"
                                            f"{_last_log_line(submitted)}", str(submitted["job_id"]))
        else:
            states[key] = RunState(MISSING)
    if unconfirmed_hosts and notes is not None:
        notes.append(f"local jobs of {out / LEDGER} run on {', '.join(sorted(unconfirmed_hosts))}, not here: they "
                     "count as queued until submitit's result file shows they ended; run `status` on that host "
                     "to tell a running job from a killed one")
    return states


def _listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def _claim(out: Path, key: str) -> tuple[dict, float] | None:
    path = claim_path(out, key)
    try:
        heartbeat = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return (_read_json(path) or {}), heartbeat


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_log_line(entry: dict) -> str:
    for name in ("stderr", "stdout"):
        path = entry.get(name)
        if not path:
            continue
        try:
            lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            continue
        if lines:
            return f": {lines[-1].strip()[:200]}"
    return ""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def _timestamp(text: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        return None
