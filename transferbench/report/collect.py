"""Collect the result records of a results store into one tidy table of completed runs.

Every ``runs/<run_key>/`` folder ends up in exactly one of two tables: ``runs`` (one row per completed run) or
``failed`` (the path and the reason: unreadable JSON, a status other than ``completed``, a missing required
field, or a run folder without its record). Nothing is dropped silently.

Reading is tolerant of schema versions: optional fields that are missing become NaN, and a few older layouts
are understood (metrics at the top level, ``sparsity`` as a number, percentages instead of fractions). All
accuracies and sparsities in ``runs`` are fractions in [0, 1], ``upstream_top1`` (ImageNet top-1) included.
Every row has ``source == "ours"``; the paper's published results (``reference.py``) have ``"paper"``.

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
    "created_at", "checkpoint", "schema_version", "path", "source",
)
OURS = "ours"
PARALLEL_MIN_RECORDS = 2000  # below this, starting worker processes costs more than it saves
CHUNKS_PER_WORKER = 4

try:  # several times faster than json on records with long training curves; optional
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads
FAILED_COLUMNS: tuple[str, ...] = ("path", "run_key", "reason")
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
    def n_failed(self) -> int:
        return len(self.failed)

    def summary(self) -> str:
        text = f"{self.n_completed} completed run(s), {self.n_failed} failed or partial in {self.results_dir}"
        if self.n_failed:
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


def collect(results_dir: str | Path, workers: int | None = None) -> Collection:
    """Read every ``runs/<run_key>/result.json`` under ``results_dir`` (or directly under it, if it has no
    ``runs/`` folder). Unfinished runs (training state in ``work/<run_key>/`` and no record) count as failed.

    ``workers`` processes parse the records (default: the usable CPU cores, for stores of at least
    ``PARALLEL_MIN_RECORDS`` runs); the result does not depend on it."""
    root = Path(results_dir)
    if not root.is_dir():
        raise TransferbenchError(f"no results folder at {root} (--results); run some experiments first or point "
                                 "--results at the folder that holds runs/")
    runs_dir = root / "runs" if (root / "runs").is_dir() else root
    with os.scandir(runs_dir) as entries:
        names = sorted(e.name for e in entries if e.is_dir())
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for chunk_rows, chunk_failed in _read_all(runs_dir, names, workers):
        rows.extend(chunk_rows)
        failed.extend(chunk_failed)
    seen = {row["run_dir"] for row in rows}
    for row in rows:
        del row["run_dir"]
    work = root / "work"
    if work.is_dir():
        for wdir in sorted(p for p in work.iterdir() if p.is_dir()):
            if wdir.name not in seen and not (runs_dir / wdir.name / RESULT_FILE).exists():
                failed.append({"path": str(wdir), "run_key": wdir.name,
                               "reason": "unfinished: training state in work/ and no record (running or crashed)"})
    collection = Collection(runs=runs_frame(rows), failed=pd.DataFrame(failed, columns=list(FAILED_COLUMNS)),
                            results_dir=root)
    (log.warning if collection.n_failed else log.info)("collected %s", collection.summary())
    return collection


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
            present = sorted(os.listdir(os.path.join(runs_dir, name)))
            if present:
                failed.append({"path": os.path.join(runs_dir, name), "run_key": name,
                               "reason": f"partial: no {RESULT_FILE} beside {', '.join(present)}"})
            continue
        except OSError as exc:
            failed.append({"path": path, "run_key": name, "reason": f"unreadable JSON: {exc}"})
            continue
        try:
            row = parse_record(_load(data), default_run_key=name)
        except RecordError as exc:
            failed.append({"path": path, "run_key": name, "reason": str(exc)})
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


def _fraction(x: Any) -> float:
    """A fraction in [0, 1]; values above 1 are read as percentages (older layouts)."""
    v = _number(x)
    return v / 100.0 if v > 1.0 else v


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

    row: dict[str, Any] = {
        "run_key": _text(record.get("run_key")) or default_run_key,
        "task": _text(record.get("task")),
        "method": _text(_first(record.get("method"), ckpt.get("method"))),
        "arch": _text(_first(record.get("arch"), ckpt.get("arch"))),
        "mode": _text(record.get("mode")),
        "seed": _seed(record.get("seed")),
        "top1": _fraction(metric("top1")),
        "mean_per_class_acc": _fraction(_first(metric("mean_per_class_acc"), metric("mean_per_class"))),
        "solver": _text(_get(record, "config", "hparams", "solver")),
        "upstream_top1": _fraction(_first(record.get("upstream_top1"), ckpt.get("upstream_top1"),
                                          metrics.get("upstream_top1"), _get(record, "upstream", "top1"))),
        "total_s": _number(_get(record, "timings", "total_s")),
        "created_at": _text(record.get("created_at")),
        "checkpoint": _text(_first(ckpt.get("identity"), ckpt.get("name"), ckpt.get("path"))),
        "schema_version": _seed(record.get("schema_version")),
    }
    target = _fraction(_first(record.get("target_sparsity"), ckpt.get("sparsity")))
    if math.isnan(target) and row["method"] == "dense":
        target = 0.0
    row["target_sparsity"] = None if math.isnan(target) else target
    if isinstance(sparsity, dict):
        row["measured_sparsity"] = _fraction(_first(sparsity.get("backbone_after"), sparsity.get("backbone_before")))
    else:
        row["measured_sparsity"] = _fraction(sparsity)

    primary_metric = _text(metric("primary_metric")) or _primary_metric_of_task(row["task"])
    primary = _fraction(metric("primary"))
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
