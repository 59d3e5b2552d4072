"""Collect the result records of a results store into one tidy table of completed runs.

Every run the store knows of ends up in exactly one of two tables: ``runs`` (one row per completed run) or
``failed`` (path, run key, ``state`` and reason), one row per run key:

* ``running``: ``work/<key>/claim.json`` has a fresh heartbeat (a sweep job is executing it now);
* ``unfinished``: training state in ``work/<key>/`` that no sweep job claims, and no record: a full fine-tuning
  started with ``transferbench run`` (still going, or interrupted: the same command resumes it);
* ``failed``: ``failures/<key>.json`` from the sweep dispatcher (its error line), a record that cannot be read,
  has a status other than ``completed``, misses a required field or holds an impossible value, or a claim whose
  heartbeat went stale with no record (the job crashed or was killed);
* ``partial``: a ``runs/<key>/`` folder with files but no record; ``empty``: one with no files at all.

Nothing is dropped silently. The formats of ``failures/`` and ``work/`` are those of ``dispatch/state.py``.

Reading is tolerant of schema versions: optional fields that are missing become NaN, and a few older layouts
are understood (metrics at the top level, ``sparsity`` as a number, percentages instead of fractions). Units are
decided per record, never per value: records of ``schema_version`` ≥ 1 store accuracies and sparsities as
fractions (a value outside [0, 1] makes the record failed) and the checkpoint's registered ``upstream_top1`` in
percent; in an unversioned or version-0 record, accuracies are percentages when any of them exceeds 1, and
sparsities likewise. All accuracies and sparsities in ``runs`` are fractions in [0, 1], ``upstream_top1``
(ImageNet top-1) included. Every row has ``source == "ours"``; the paper's results (``reference.py``) ``"paper"``.

Large stores are read by several processes (the records are parsed with ``orjson`` when it is installed): about
100,000 records in a few seconds on 2 cores (``benchmarks/bench_report.py``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import write_bytes
from ..errors import TransferbenchError
from ..records import RESULT_FILE
from ..runspec import SCHEMA_VERSION as KNOWN_SCHEMA_VERSION

log = logging.getLogger("transferbench")


RUN_COLUMNS: tuple[str, ...] = (
    "run_key", "task", "method", "arch", "mode", "seed", "target_sparsity", "measured_sparsity",
    "top1", "mean_per_class_acc", "primary_metric", "primary", "solver", "upstream_top1", "total_s",
    "created_at", "checkpoint", "schema_version", "versions", "path", "source",
)
OURS = "ours"
PARALLEL_MIN_RECORDS = 2000  # below this, starting worker processes costs more than it saves
CHUNKS_PER_WORKER = 4

try:  # several times faster than json on records with long training curves; optional
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads
FAILED_COLUMNS: tuple[str, ...] = ("path", "run_key", "state", "reason")
RUNNING, UNFINISHED, FAILED, PARTIAL, EMPTY = "running", "unfinished", "failed", "partial", "empty"
# The sweep dispatcher's layout (dispatch/state.py), repeated because importing transferbench.dispatch loads the
# sweep planner; tests/test_report.py checks that the two agree.
FAILURES_DIR = "failures"
CLAIM_FILE = "claim.json"
STALE_AFTER_S = 600.0
# Folders of a results root that are not run folders, for a root without runs/ whose run folders sit directly in it
STORE_FOLDERS = frozenset({"work", FAILURES_DIR, "jobs", "cache", "leaderboards", "figures", "compare", "beyond",
                           "report"})
REQUIRED = ("task", "method", "arch", "mode", "seed", "target_sparsity", "primary")

# How each metric name a record may carry maps onto a column of `runs`.
METRIC_COLUMNS = {"top1": "top1", "mean_per_class": "mean_per_class_acc", "mean_per_class_acc": "mean_per_class_acc"}


class RecordError(ValueError):
    """A record that cannot be counted as a completed run; the message is the reason."""


@dataclass(frozen=True)
class Collection:
    """The completed runs of a results store, and the run folders that are not complete."""

    runs: pd.DataFrame
    failed: pd.DataFrame
    results_dir: Path

    @property
    def n_completed(self) -> int:
        return len(self.runs)

    @property
    def n_running(self) -> int:
        return int((self.failed["state"] == RUNNING).sum())

    @property
    def n_unfinished(self) -> int:
        return int((self.failed["state"] == UNFINISHED).sum())

    @property
    def n_failed(self) -> int:
        """Runs that failed, crashed or left a partial or empty folder (running and unfinished ones are not
        counted)."""
        return len(self.failed) - self.n_running - self.n_unfinished

    def summary(self) -> str:
        text = f"{self.n_completed} completed run(s), {self.n_failed} failed or partial"
        if self.n_running:
            text += f", {self.n_running} running"
        if self.n_unfinished:
            text += f", {self.n_unfinished} unfinished"
        text += f" in {self.results_dir}"
        if len(self.failed):
            reasons = Counter(r.split(":")[0] for r in self.failed["reason"])
            text += " (" + "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) + ")"
        return text

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``runs.parquet``, ``runs.csv`` and ``failed.csv`` into ``out_dir``, each atomically."""
        out = Path(out_dir)
        buf = io.BytesIO()
        self.runs.to_parquet(buf, index=False)
        paths = [
            write_bytes(out / "runs.parquet", buf.getvalue()),
            write_bytes(out / "runs.csv", self.runs.to_csv(index=False).encode()),
            write_bytes(out / "failed.csv", self.failed.to_csv(index=False).encode()),
        ]
        log.info("wrote %d completed run(s) and %d failed/partial to %s", self.n_completed, self.n_failed, out)
        return paths


def collect(results_dir: str | Path, workers: int | None = None, *, now: float | None = None) -> Collection:
    """Read every ``runs/<run_key>/result.json`` under ``results_dir`` (or directly under it, if it has no
    ``runs/`` folder but run folders with records), and the runs the store knows of without a record: failures,
    claims and training state of the sweep dispatcher (see the module docstring).

    ``workers`` processes parse the records (default: the usable CPU cores, for stores of at least
    ``PARALLEL_MIN_RECORDS`` runs); the result does not depend on it. ``now`` (seconds since the epoch) is the
    time claims' heartbeats are judged against (default: the clock)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise TransferbenchError(f"no results folder at {root} (--results); run some experiments first or point "
                                 "--results at the folder that holds runs/")
    runs_dir, names = _run_folders(root)
    rows: list[dict[str, Any]] = []
    not_done: dict[str, dict[str, Any]] = {}
    for chunk_rows, chunk_failed in _read_all(runs_dir, names, workers):
        rows.extend(chunk_rows)
        not_done.update((f["run_key"], f) for f in chunk_failed)
    done = {row.pop("run_dir") for row in rows}
    # a failure file says more than a partial folder; a fresh claim (the run was resubmitted) overrides both
    for key, entry in _failure_files(root).items():
        if key not in done:
            not_done[key] = entry
    for key, entry in _work_folders(root, time.time() if now is None else now, done).items():
        if entry["state"] == RUNNING or key not in not_done:
            not_done[key] = entry
    failed = pd.DataFrame([not_done[k] for k in sorted(not_done)], columns=list(FAILED_COLUMNS))
    collection = Collection(runs=runs_frame(rows), failed=failed, results_dir=root)
    (log.warning if collection.n_failed else log.info)("collected %s", collection.summary())
    return collection


def _listing(folder: Path, what: str) -> list[str]:
    """Sorted names of the sub-folders of ``folder``; an unreadable folder is a one-line error."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.is_dir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise TransferbenchError(f"cannot read {what} {folder} (--results): {exc.strerror or exc}; check that the "
                                 "folder is readable by you") from None


def _run_folders(root: Path) -> tuple[Path, list[str]]:
    """(the folder holding the run folders, their names)."""
    if (root / "runs").is_dir():
        return root / "runs", _listing(root / "runs", "the run folder")
    names = [n for n in _listing(root, "the results folder") if n not in STORE_FOLDERS]
    if any((root / n / RESULT_FILE).is_file() for n in names):
        return root, names  # run folders directly in the root (a copied or hand-made store)
    if any((root / n).is_dir() for n in ("work", FAILURES_DIR, "jobs")):
        return root / "runs", []  # a sweep's store before its first run completed
    raise TransferbenchError(f"no runs/ folder and no run records in {root} (--results); point --results at the "
                             f"results root that holds runs/<run_key>/{RESULT_FILE}")


def _read_json_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _failure_files(root: Path) -> dict[str, dict[str, Any]]:
    """``failures/<key>.json`` of the sweep dispatcher: the run failed, with its error line."""
    folder = root / FAILURES_DIR
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise TransferbenchError(f"cannot read the failures folder {folder} (--results): {exc.strerror or exc}; "
                                 "check that the folder is readable by you") from None
    out = {}
    for name in names:
        key, path = name[: -len(".json")], folder / name
        failure = _read_json_file(path)
        if failure is None:
            reason = "failed: unreadable failure file"
        else:
            error = " ".join(str(failure.get("error") or "no error line").split())
            job = f" (job {failure['job_id']})" if failure.get("job_id") else ""
            reason = f"failed: {error}{job}"
        out[key] = {"path": str(path), "run_key": key, "state": FAILED, "reason": reason}
    return out


def _work_folders(root: Path, now: float, done: set[str]) -> dict[str, dict[str, Any]]:
    """``work/<key>/`` of runs without a record: running while a claim's heartbeat is fresh, crashed when it went
    stale (a killed job stops touching it), unfinished when no job claims training state left there. Folders of
    completed runs (linear probes keep theirs) are skipped before any file-system call: a store of 100k runs is
    often on a network file system."""
    out = {}
    for key in _listing(root / "work", "the work folder"):
        if key in done:
            continue
        wdir = root / "work" / key
        claim_file = wdir / CLAIM_FILE
        try:
            age = now - claim_file.stat().st_mtime
        except OSError:
            age = None
        if age is not None and age < STALE_AFTER_S:
            claim = _read_json_file(claim_file) or {}
            who = f"job {claim.get('job_id', '?')} on {claim.get('host', '?')}"
            entry = {"state": RUNNING, "reason": f"running: claimed by {who}, heartbeat {max(age, 0):.0f} s ago"}
        else:
            try:
                present = sorted(n for n in os.listdir(wdir) if n not in (CLAIM_FILE, ".lock"))
            except OSError:
                present = []
            held = f"work/ holds {', '.join(present)}" if present else "work/ holds no training state"
            if age is not None:
                entry = {"state": FAILED,
                         "reason": f"crashed: no record; {held}; its claim's heartbeat stopped {age / 60:.0f} min ago"}
            elif present:
                entry = {"state": UNFINISHED,
                         "reason": f"unfinished: no record; {held}; no sweep job claims it (a `transferbench run` "
                                   "still going, or interrupted: the same command resumes it)"}
            else:  # a lock file alone: a run between jobs (queued again after a requeue), nothing to report
                continue
        out[key] = {"path": str(wdir), "run_key": key, **entry}
    return out


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _read_all(runs_dir: Path, names: list[str], workers: int | None):
    if workers is None:
        workers = default_workers() if len(names) >= PARALLEL_MIN_RECORDS else 1
    if workers <= 1 or len(names) < 2:
        return [_read_chunk(str(runs_dir), names)]
    n_chunks = min(len(names), workers * CHUNKS_PER_WORKER)
    size = -(-len(names) // n_chunks)
    chunks = [names[i : i + size] for i in range(0, len(names), size)]
    # fork: the workers need nothing but this module, and forking skips re-importing pandas in each of them
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        return list(pool.map(_read_chunk, [str(runs_dir)] * len(chunks), chunks))


def _read_chunk(runs_dir: str, names: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows and failures of the run folders ``names``, in order (a worker's share of ``collect``)."""
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for name in names:
        path = os.path.join(runs_dir, name, RESULT_FILE)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            folder = os.path.join(runs_dir, name)
            try:
                present = sorted(os.listdir(folder))
            except OSError as exc:
                failed.append({"path": folder, "run_key": name, "state": FAILED,
                               "reason": f"unreadable folder: {exc.strerror or exc}"})
                continue
            if present:
                failed.append({"path": folder, "run_key": name, "state": PARTIAL,
                               "reason": f"partial: no {RESULT_FILE} beside {', '.join(present)}"})
            else:
                failed.append({"path": folder, "run_key": name, "state": EMPTY,
                               "reason": "empty: a run folder with no files (the run never wrote its outputs)"})
            continue
        except OSError as exc:
            failed.append({"path": path, "run_key": name, "state": FAILED,
                           "reason": f"unreadable JSON: {exc.strerror or exc}"})
            continue
        try:
            row = parse_record(_load(data), default_run_key=name)
        except RecordError as exc:
            failed.append({"path": path, "run_key": name, "state": FAILED, "reason": str(exc)})
            continue
        row["path"] = path
        row["run_dir"] = name
        rows.append(row)
    return rows, failed


def _load(data: bytes) -> Any:
    try:
        return _loads(data)
    except (UnicodeDecodeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise RecordError(f"unreadable JSON: {exc}") from None


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _number(x: Any) -> float:
    if isinstance(x, bool) or x is None:
        return math.nan
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _as_fractions(values: dict[str, float], versioned: bool, version: int | None, what: str) -> dict[str, float]:
    """``values`` (one record's accuracies, or its sparsities) as fractions, one unit decision for the record:
    versioned records store fractions (anything outside [0, 1] is a bad record); older ones store percentages
    when any of the values exceeds 1."""
    present = {k: v for k, v in values.items() if not math.isnan(v)}
    if versioned:
        bad = {k: v for k, v in present.items() if not 0.0 <= v <= 1.0}
        if bad:
            name, value = next(iter(bad.items()))
            raise RecordError(f"bad value: {name} {value:g} is not a fraction, as schema_version {version} records "
                              f"store {what}")
        return values
    if any(v > 1.0 for v in present.values()):
        return {k: v / 100.0 for k, v in values.items()}
    return values


def _versions_text(versions: Any) -> str | None:
    """The record's package versions as one comparable text, ``name=version`` sorted by name."""
    if not isinstance(versions, dict) or not versions:
        return None
    return " ".join(f"{k}={versions[k]}" for k in sorted(versions))


def _text(x: Any) -> str | None:
    return x if isinstance(x, str) and x else None


def _seed(x: Any) -> int | None:
    v = _number(x)
    return int(v) if not math.isnan(v) and v == int(v) else None


def _primary_metric_of_task(task: str | None) -> str | None:
    if task is None:
        return None
    try:
        from ..tasks import get_task

        return get_task(task).metric
    except Exception:  # an unknown task (or a broken card) just leaves the metric unknown
        return None


def parse_record(record: Any, default_run_key: str = "") -> dict[str, Any]:
    """One row of ``runs`` from a parsed ``result.json``; raises RecordError when it is not a completed run."""
    if not isinstance(record, dict):
        raise RecordError(f"not a JSON object but {type(record).__name__}")
    status = record.get("status")
    if status != "completed":
        raise RecordError("missing fields: status" if status is None else f"status {status!r}")
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    ckpt = record.get("checkpoint") if isinstance(record.get("checkpoint"), dict) else {}
    sparsity = record.get("sparsity")

    def metric(name: str) -> Any:
        return _first(metrics.get(name), record.get(name))  # top-level metrics: older layout

    version = _seed(record.get("schema_version"))
    versioned = version is not None and version >= 1
    accuracies = {
        "top1": _number(metric("top1")),
        "mean_per_class_acc": _number(_first(metric("mean_per_class_acc"), metric("mean_per_class"))),
        "primary": _number(metric("primary")),
    }
    if isinstance(sparsity, dict):
        measured = _first(sparsity.get("backbone_after"), sparsity.get("backbone_before"))
    else:
        measured = sparsity
    sparsities = {"target_sparsity": _number(_first(record.get("target_sparsity"), ckpt.get("sparsity"))),
                  "measured_sparsity": _number(measured)}
    accuracies = _as_fractions(accuracies, versioned, version, "accuracies")
    sparsities = _as_fractions(sparsities, versioned, version, "sparsities")
    # the checkpoint block carries the registry's upstream top-1, which the registry keeps in percent
    ckpt_upstream = _number(ckpt.get("upstream_top1"))
    if versioned or ckpt_upstream > 1.0:  # an unversioned record may hold an older fraction
        ckpt_upstream /= 100.0
    upstream = _number(_first(record.get("upstream_top1"), metrics.get("upstream_top1"),
                              _get(record, "upstream", "top1")))
    if not versioned and upstream > 1.0:  # one number in an unversioned record: nothing else to judge its unit by
        upstream /= 100.0
    if versioned and not (math.isnan(upstream) or 0.0 <= upstream <= 1.0):
        raise RecordError(f"bad value: upstream_top1 {upstream:g} is not a fraction, as schema_version "
                          f"{version} records store it")
    if versioned and not (math.isnan(ckpt_upstream) or 0.0 <= ckpt_upstream <= 1.0):
        raise RecordError(f"bad value: checkpoint upstream_top1 {ckpt_upstream * 100:g} is not a percentage, as "
                          f"schema_version {version} records store it")

    row: dict[str, Any] = {
        "run_key": _text(record.get("run_key")) or default_run_key,
        "task": _text(record.get("task")),
        "method": _text(_first(record.get("method"), ckpt.get("method"))),
        "arch": _text(_first(record.get("arch"), ckpt.get("arch"))),
        "mode": _text(record.get("mode")),
        "seed": _seed(record.get("seed")),
        "top1": accuracies["top1"],
        "mean_per_class_acc": accuracies["mean_per_class_acc"],
        "solver": _text(_get(record, "config", "hparams", "solver")),
        "upstream_top1": upstream if not math.isnan(upstream) else ckpt_upstream,
        "total_s": _number(_get(record, "timings", "total_s")),
        "created_at": _text(record.get("created_at")),
        "checkpoint": _text(_first(ckpt.get("identity"), ckpt.get("name"), ckpt.get("path"))),
        "schema_version": version,
        "versions": _versions_text(record.get("versions")),
    }
    target = sparsities["target_sparsity"]
    if math.isnan(target) and row["method"] == "dense":
        target = 0.0
    row["target_sparsity"] = None if math.isnan(target) else target
    row["measured_sparsity"] = sparsities["measured_sparsity"]

    primary_metric = _text(metric("primary_metric")) or _primary_metric_of_task(row["task"])
    primary = accuracies["primary"]
    if math.isnan(primary) and primary_metric in METRIC_COLUMNS:
        primary = row[METRIC_COLUMNS[primary_metric]]
    row["primary_metric"] = primary_metric
    row["primary"] = None if math.isnan(primary) else primary

    missing = [k for k in REQUIRED if row[k] is None]
    if missing:
        raise RecordError(f"missing fields: {', '.join(missing)}")
    return row


def runs_frame(rows: list[dict[str, Any]], source: str = OURS) -> pd.DataFrame:
    """The ``runs`` table (typed, sorted) from rows of :func:`parse_record`, all of one ``source``."""
    df = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    df["source"] = pd.Series(source, index=df.index, dtype="object")
    for col in ("target_sparsity", "measured_sparsity", "top1", "mean_per_class_acc", "primary", "upstream_top1",
                "total_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df["seed"] = df["seed"].astype("Int64")
    df["schema_version"] = df["schema_version"].astype("Int64")
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True, errors="coerce", format="ISO8601")
    versions = set(df["schema_version"].dropna().astype(int))
    if any(v > KNOWN_SCHEMA_VERSION for v in versions):
        log.warning("records with schema_version %s (newer than %d) were read best-effort",
                    sorted(v for v in versions if v > KNOWN_SCHEMA_VERSION), KNOWN_SCHEMA_VERSION)
    keys = ["arch", "mode", "task", "method", "target_sparsity", "seed", "run_key"]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)
