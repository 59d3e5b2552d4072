"""Where each run stands, judged once from the files of the results root (and, for submitted jobs, ``squeue``;
never ``sacct``). One vocabulary for every command:

    done        a completed, valid record (runs/<key>/result.json) — what jobs check before they start
    running     a fresh claim: a process holds the run's lock and its heartbeat is recent
    queued      submitted by a sweep (jobs/ledger.jsonl) and its job may still run it
    unfinished  training state in work/<key>/ that no job claims: a `transferbench run` going on or interrupted
                (the same command resumes it)
    failed      a failure file (its error line), or a record that is not a completed run (the reason)
    lost        started and gone without a record: a claim whose heartbeat went stale, a submitted job that ended,
                a run folder left partial or empty
    missing     no trace: never started

A failure is superseded by a later submission of the same run while that job is alive (then the run is queued).
``sweep`` submits missing, lost and unfinished runs (full fine-tuning resumes from its training state).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import TransferbenchError
from .claims import error_line, read_ledger
from .layout import (
    CLAIM_FILE,
    FAILURES,
    LOCK_FILE,
    RESULT_FILE,
    RUNS,
    WORK,
    claim_path,
    failure_path,
    ledger_path,
    record_dir,
    result_path,
    work_dir,
)
from .record import RecordError, RunRecord

DONE, RUNNING, QUEUED, UNFINISHED, FAILED, LOST, MISSING = (
    "done", "running", "queued", "unfinished", "failed", "lost", "missing")
STATES = (DONE, RUNNING, QUEUED, UNFINISHED, FAILED, LOST, MISSING)
TO_RUN = frozenset({MISSING, LOST, UNFINISHED})  # what a plain `sweep` submits
STALE_AFTER_S = 600.0


@dataclass(frozen=True)
class RunState:
    state: str
    detail: str = ""
    job_id: str = ""
    path: str = ""  # the file or folder that says so

    @property
    def reason(self) -> str:
        """One line for a table of runs that are not done: the state, what says so, and the job."""
        job = f" (job {self.job_id})" if self.job_id and self.state == FAILED else ""
        return f"{self.state}: {self.detail or 'no trace in the results root'}{job}"


def read_record(path: str | Path) -> RunRecord | None:
    """The completed record at ``path``, or None (absent, unreadable, or not a completed run)."""
    try:
        return RunRecord.from_json(json.loads(Path(path).read_bytes()))
    except (OSError, ValueError):  # RecordError is a ValueError
        return None


def _record_problem(path: Path) -> str | None:
    """None for a completed record, else why it is not one ("absent" when there is no file)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"unreadable JSON: {exc.strerror or exc}"
    try:
        RunRecord.from_json(json.loads(data))
    except RecordError as exc:
        return str(exc)
    except ValueError as exc:
        return f"unreadable JSON: {exc}"
    return None


def command_error_line(output: str, default: str) -> str:
    """The line of a failed SLURM command's stderr that says why: the last one naming an error, else the last
    non-blank one. Not the first: sbatch and squeue print warnings (a deprecated option, a site's notice)
    before the error, and a one-line report that quotes the warning hides the cause."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else default)


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




@dataclass
class _Evidence:
    """What the results root holds about its runs, read once per judgement (one listing per folder)."""

    root: Path
    run_dirs: set[str]
    work: set[str]
    failed: set[str]
    ledger: dict[str, dict]
    queue: SlurmQueue | None
    now: float
    stale_after_s: float


def known_keys(root: str | Path) -> list[str]:
    """Every run key the store holds a trace of: run folders, work folders and failure files."""
    root = Path(root)
    failed = {n[: -len(".json")] for n in _listing(root / FAILURES) if n.endswith(".json")}
    return sorted(_listing(root / RUNS) | _listing(root / WORK) | failed)


def run_states(out: str | Path, keys: Iterable[str] | None = None, *, now: float | None = None,
               stale_after_s: float = STALE_AFTER_S, notes: list[str] | None = None,
               record_problems: Mapping[str, str | None] | None = None) -> dict[str, RunState]:
    """The state of every key (default: ``known_keys``); 100k keys take about a second.

    ``record_problems`` (key → None for a completed record, else why not) saves reading records the caller has
    read already (``collect`` parses them in parallel). What limits the answer (no ``squeue``) is appended to
    ``notes``.
    """
    root = Path(out)
    keys = known_keys(root) if keys is None else list(keys)
    ledger = read_ledger(root) if ledger_path(root).is_file() else {}
    queue = live_slurm_jobs() if any(e.get("executor") == "slurm" for e in ledger.values()) else None
    if queue is not None and queue.problem and notes is not None:
        notes.append(f"{queue.problem}: SLURM jobs of {ledger_path(root)} count as queued until submitit's result "
                     "file shows they ended, so cancelled or killed jobs are not seen as gone; run `status` where "
                     "squeue works (a login node)")
    evidence = _Evidence(root, _listing(root / RUNS), _listing(root / WORK),
                         {n[: -len(".json")] for n in _listing(root / FAILURES) if n.endswith(".json")}, ledger,
                         queue, time.time() if now is None else now, stale_after_s)
    states: dict[str, RunState] = {}
    for key in keys:
        if record_problems is not None and key in record_problems:
            problem = record_problems[key]
        else:
            problem = _record_problem(result_path(root, key)) if key in evidence.run_dirs else "absent"
        states[key] = _judge(key, problem, evidence)
    _note_other_hosts(states, evidence, notes)
    return states


def _judge(key: str, record_problem: str | None, ev: _Evidence) -> RunState:
    """One run's state from the evidence, strongest first (see the module docstring)."""
    if record_problem is None:
        return RunState(DONE, path=str(result_path(ev.root, key)))
    claim = _claim(ev.root, key) if key in ev.work else None
    if claim is not None and ev.now - claim[1] < ev.stale_after_s:
        job, host = claim[0].get("job_id", "?"), claim[0].get("host", "?")
        return RunState(RUNNING, f"claimed by job {job} on {host}, heartbeat {max(ev.now - claim[1], 0):.0f} s ago",
                        str(claim[0].get("job_id", "")), str(claim_path(ev.root, key)))
    if record_problem != "absent":
        return RunState(FAILED, record_problem, path=str(result_path(ev.root, key)))
    submitted = ev.ledger.get(key)
    alive, unconfirmed = _liveness(submitted, ev.queue) if submitted is not None else (False, "")
    if key in ev.failed:
        failure = _read_json(failure_path(ev.root, key))
        failed_at = _timestamp(failure.get("failed_at", "")) if failure else None
        submitted_at = _timestamp(submitted["submitted_at"]) if submitted else None
        if not (submitted_at and failed_at and submitted_at > failed_at and alive):
            error = " ".join(str(failure.get("error") or "no error line").split()) if failure else \
                "unreadable failure file"
            return RunState(FAILED, error, str(failure.get("job_id", "")) if failure else "",
                            str(failure_path(ev.root, key)))
    if submitted is not None and alive:
        detail = f" (not confirmed: {unconfirmed})" if unconfirmed else ""
        return RunState(QUEUED, f"job {submitted['job_id']}{detail}", str(submitted["job_id"]))
    held = _training_state(ev.root, key) if key in ev.work else ""
    if claim is not None:
        return RunState(LOST, f"job {claim[0].get('job_id', '?')} stopped sending heartbeats "
                              f"{(ev.now - claim[1]) / 60:.0f} min ago; {held or 'work/ holds no training state'}",
                        str(claim[0].get("job_id", "")), str(work_dir(ev.root, key)))
    if submitted is not None:
        return RunState(LOST, f"job {submitted['job_id']} ended without a record{_last_log_line(submitted)}",
                        str(submitted["job_id"]))
    if held:
        return RunState(UNFINISHED, f"no record; {held}; no sweep job claims it (a `transferbench run` still going, "
                                    "or interrupted: the same command resumes it)", path=str(work_dir(ev.root, key)))
    if key in ev.run_dirs:
        return leftover_run_folder(record_dir(ev.root, key))
    return RunState(MISSING)


def _training_state(root: Path, key: str) -> str:
    """What a work folder holds besides its lock and claim ("" when nothing)."""
    try:
        present = sorted(n for n in os.listdir(work_dir(root, key)) if n not in (CLAIM_FILE, LOCK_FILE))
    except OSError:
        return ""
    return f"work/ holds {', '.join(present)}" if present else ""


def leftover_run_folder(folder: Path) -> RunState:
    """A run folder without a record: the run died between writing its predictions and its record."""
    try:
        present = sorted(os.listdir(folder))
    except OSError as exc:
        return RunState(FAILED, f"unreadable folder: {exc.strerror or exc}", path=str(folder))
    if present:
        return RunState(LOST, f"partial: no {RESULT_FILE} beside {', '.join(present)}", path=str(folder))
    return RunState(LOST, "empty: a run folder with no files (the run never wrote its outputs)", path=str(folder))


def _note_other_hosts(states: dict[str, RunState], ev: _Evidence, notes: list[str] | None) -> None:
    hosts = {str(ev.ledger[k].get("host")) for k, s in states.items()
             if s.state == QUEUED and "not confirmed: local job on " in s.detail}
    if hosts and notes is not None:
        notes.append(f"local jobs of {ledger_path(ev.root)} run on {', '.join(sorted(hosts))}, not here: they "
                     "count as queued until submitit's result file shows they ended; run `status` on that host "
                     "to tell a running job from a killed one")


def _listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError as exc:
        raise TransferbenchError(f"cannot read {folder} (--results): {exc.strerror or exc}; check that the folder "
                                 "is readable by you") from None


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


def _timestamp(text: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        return None
