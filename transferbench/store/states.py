"""Where each run stands, judged once from the files of the results root (and, for submitted jobs, ``squeue``;
never ``sacct``). One vocabulary for every command:

    done        a completed, valid record (runs/<key>/result.json) — what jobs check before they start
    running     a live claim: a process holds the run's lock (on this host the lock itself is tested; a claim
                made on another host counts while its heartbeat is recent, see ``claims.claim_alive``)
    queued      submitted by a sweep (jobs/ledger.jsonl) and its job may still run it
    unfinished  training state in work/<key>/ that no process claims: an interrupted run that left no claim (the
                same command resumes it), or a `transferbench run` going on where the results root cannot be locked
    failed      a failure file (its error line), or a record that is not a completed run (the reason)
    lost        started and gone without a record: a claim whose lock is free or whose heartbeat went stale, a
                submitted job that ended, a run folder left partial or empty
    missing     no trace: never started

A record is judged by ``load_record`` alone, for every command (``run`` and sweep jobs skip a run whose record
it accepts, ``status`` and ``collect`` count it done), so no two commands disagree about a run.

A failure is superseded by a later submission of the same run while that job is alive (then the run is queued).
``sweep`` submits missing, lost and unfinished runs (full fine-tuning resumes from its training state).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import TransferbenchError
from .claims import claim_alive, error_line, lock_held, read_ledger
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


try:  # several times faster than json on records with long training curves, and as strict; optional
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    def _loads(data: bytes | str) -> object:
        return json.loads(data, parse_constant=_not_json)


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON value")


def load_record(data: bytes, default_run_key: str = "") -> RunRecord:
    """The completed record in ``data`` (a ``result.json``'s bytes); RecordError (its message the reason) when it
    is not one. The one judgement of a record for every command: ``run`` and sweep jobs skip the runs it accepts,
    ``status`` and ``collect`` count them done. Strict JSON (the writer never writes NaN or Infinity, so a record
    holding them was not written by a run) and values a run can produce (``impossible_value``)."""
    try:
        parsed = _loads(data)
    except ValueError as exc:  # UnicodeDecodeError and orjson.JSONDecodeError are ValueErrors
        raise RecordError(f"unreadable JSON: {exc}") from None
    record = RunRecord.from_json(parsed, default_run_key)
    problem = impossible_value(record)
    if problem:
        raise RecordError(f"bad value: {problem}")
    return record


_FRACTIONS = ("top1", "mean_per_class_acc", "primary")


def impossible_value(record: RunRecord) -> str | None:
    """What in ``record`` no run can produce (None when nothing): an accuracy or sparsity outside [0, 1] (checked
    after a legacy record's percent were turned into fractions), a negative or non-numeric time."""
    metrics = record.metrics
    fractions = {**{name: getattr(metrics, name) for name in _FRACTIONS},
                 "target_sparsity": record.target_sparsity, "measured_sparsity": record.sparsity.measured,
                 # a legacy record's extra metrics kept their own unit (upgrade_legacy converts the named ones)
                 "best_top1": metrics.extra.get("best_top1") if record.schema_version >= 1 else None}
    for name, value in fractions.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isnan(value) or
                                                                                  0.0 <= value <= 1.0):
            return f"{name} {value!r} is not a fraction in [0, 1]"
    for name, value in record.timings.items():
        if name.endswith("_s") and value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < math.inf):
            return f"timings.{name} {value!r} is not a duration in seconds"
    return None


def read_record(path: str | Path) -> RunRecord | None:
    """The completed record at ``path``, or None (absent, unreadable, or not a completed run: ``load_record``)."""
    try:
        return load_record(Path(path).read_bytes())
    except (OSError, ValueError):  # RecordError is a ValueError
        return None


def record_problem(path: str | Path) -> str | None:
    """None for a completed record (``load_record``), else why the file is not one ("absent" when there is none)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "absent"
    except IsADirectoryError:
        return f"{RESULT_FILE} is a directory, not a record"
    except OSError as exc:
        return f"unreadable {RESULT_FILE}: {exc.strerror or exc}"
    try:
        load_record(data)
    except RecordError as exc:
        return str(exc)
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
    if not (isinstance(stdout, str) and stdout and job_id):
        return False
    return (Path(stdout).parent / f"{job_id}_0_result.pkl").exists()


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
            problem = record_problem(result_path(root, key)) if key in evidence.run_dirs else "absent"
        states[key] = _judge(key, problem, evidence)
    _note_other_hosts(states, evidence, notes)
    return states


def _judge(key: str, record_problem_: str | None, ev: _Evidence) -> RunState:
    """One run's state from the evidence, strongest first (see the module docstring)."""
    if record_problem_ is None:
        return RunState(DONE, path=str(result_path(ev.root, key)))
    claim = _claim(ev.root, key) if key in ev.work else None
    if claim is not None:
        holder, age = claim[0], max(ev.now - claim[1], 0.0)
        job, host = holder.get("job_id", "?"), holder.get("host", "?")
        if claim_alive(ev.root, key, holder, ev.now - claim[1], ev.stale_after_s):
            return RunState(RUNNING, f"claimed by job {job} on {host}, heartbeat {age:.0f} s ago", str(job),
                            str(claim_path(ev.root, key)))
        if not claim_path(ev.root, key).exists():  # released meanwhile: its run may have just written its record
            return _judge(key, record_problem(result_path(ev.root, key)), ev)
    if record_problem_ != "absent":
        return RunState(FAILED, record_problem_, path=str(result_path(ev.root, key)))
    submitted = ev.ledger.get(key)
    alive, unconfirmed = _liveness(submitted, ev.queue) if submitted is not None else (False, "")
    if key in ev.failed:
        failure = _read_json(failure_path(ev.root, key))
        failed_at = _timestamp(failure.get("failed_at", "")) if failure else None
        submitted_at = _timestamp(submitted.get("submitted_at", "")) if submitted else None
        if not (submitted_at and failed_at and submitted_at > failed_at and alive):
            error = " ".join(str(failure.get("error") or "no error line").split()) if failure else \
                "unreadable failure file"
            return RunState(FAILED, error, str(failure.get("job_id", "")) if failure else "",
                            str(failure_path(ev.root, key)))
    if submitted is not None and alive:
        detail = f" (not confirmed: {unconfirmed})" if unconfirmed else ""
        return RunState(QUEUED, f"job {submitted.get('job_id', '?')}{detail}", str(submitted.get("job_id", "")))
    held = _training_state(ev.root, key) if key in ev.work else ""
    if claim is not None:
        return RunState(LOST, f"{_gone(ev.root, key, claim, ev.now)}; {held or 'work/ holds no training state'}",
                        str(claim[0].get("job_id", "")), str(work_dir(ev.root, key)))
    if submitted is not None:
        return RunState(LOST, f"job {submitted.get('job_id', '?')} ended without a record{_last_log_line(submitted)}",
                        str(submitted.get("job_id", "")))
    if held:
        return RunState(UNFINISHED, f"no record; {held}; no sweep job claims it (a `transferbench run` still going, "
                                    "or interrupted: the same command resumes it)", path=str(work_dir(ev.root, key)))
    if key in ev.run_dirs:
        return leftover_run_folder(record_dir(ev.root, key))
    return RunState(MISSING)


def _gone(root: Path, key: str, claim: tuple[dict, float], now: float) -> str:
    """Why a claim's process no longer holds its run: its lock is free (this host), or its heartbeat is stale."""
    job, age_s = claim[0].get("job_id", "?"), max(now - claim[1], 0.0)
    if claim[0].get("host") == socket.gethostname() and lock_held(root, key) is False:
        return f"job {job} is gone (killed or crashed): its lock is free; last heartbeat {age_s:.0f} s ago"
    return f"job {job} stopped sending heartbeats {age_s / 60:.0f} min ago"


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
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (_read_json(path) or {}), heartbeat


def _read_json(path: Path) -> dict | None:
    """The file's JSON object; None when it is absent, unreadable, not JSON or not an object."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _last_log_line(entry: dict) -> str:
    for name in ("stderr", "stdout"):
        path = entry.get(name)
        if not path or not isinstance(path, str):
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
