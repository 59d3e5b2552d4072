"""Collect the run records of a results store into one tidy table of completed runs.

Every run the store knows of ends up in exactly one of two tables: ``runs`` (one row per completed run) or
``failed`` (path, run key, ``state`` and reason), one row per run key. The state is the store's judgement
(``transferbench.store.run_states``: running, queued, unfinished, failed, lost), so ``collect`` and ``status``
never disagree about a run. Nothing is dropped silently.

Records are read with ``RunRecord.from_json`` (records older than schema 1 included) and flattened here into rows.
All accuracies and sparsities in ``runs`` are fractions in [0, 1], ``upstream_top1`` (ImageNet top-1) included.
Every row has ``source == "ours"``; the paper's results (``reference.py``) ``"paper"``.
``train_size`` is the training images of a low-data run (``--train-size``; 0: the whole training split, as the
paper's rows); leaderboards keep one size per cell (``select.one_train_size``). ``limit`` is the images per split
of a ``--limit`` quick try (0: the whole splits; the paper's rows are 0): such
runs never stand for a full one (``select.full_split_first``). ``protocol`` is ``"paper"`` for a run that followed
the paper's protocol exactly, else its deviations joined by ``"; "`` (``RunRecord.deviations``; a ``--limit`` run
deviates by ``limit=N``): the comparisons with the paper leave deviating runs out unless asked
(``select.exclude_deviating``).

``epoch`` chooses which epoch's accuracies a row holds: ``last`` (default: the run's final model, as the paper's
code ends; docs/protocol.md#metrics) or ``best`` (the highest value of each metric over the run's evaluated epochs,
from the record's ``curve``; a record without one is a one-line error). A record whose primary metric is not the
one its task card names now (caltech256's changed from top-1 to mean per-class accuracy) is re-read with the
card's metric, which a log line says (``align_primary``).

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
from ..estimators import ESTIMATORS
from ..protocol import PAPER as PAPER_PROTOCOL
from ..protocol import protocol_label
from ..store import (
    DONE,
    FAILED,
    LOST,
    MISSING,
    QUEUED,
    RESULT_FILE,
    RUNNING,
    SCHEMA_VERSION,
    STORE_FOLDERS,
    UNFINISHED,
    RecordError,
    RunRecord,
    RunState,
    leftover_run_folder,
    load_record,
    run_states,
)

log = logging.getLogger("transferbench")


RUN_COLUMNS: tuple[str, ...] = (
    "run_key", "task", "method", "arch", "mode", "seed", "target_sparsity", "measured_sparsity",
    "top1", "mean_per_class_acc", "primary_metric", "primary", "solver", "upstream_top1", "total_s",
    "created_at", "checkpoint", "schema_version", "versions", "path", "source", "limit", "protocol", "train_size",
    "validation_primary",  # --validation-size: the primary metric on the held-out images (hyper-parameter choice)
    *ESTIMATORS,  # an estimate record's scores (its top1 is its k-NN classifier's); NaN on other runs
)
EPOCHS = ("last", "best")  # which epoch's accuracies a collected row holds (``collect(epoch=...)``)
OURS = "ours"
# How each metric name a record or a paper result file may carry maps onto a column of `runs`.
METRIC_COLUMNS = {"top1": "top1", "mean_per_class": "mean_per_class_acc", "mean_per_class_acc": "mean_per_class_acc"}
PARALLEL_MIN_RECORDS = 2000  # below this, starting worker processes costs more than it saves
CHUNKS_PER_WORKER = 4

try:  # several times faster than json on records with long training curves; optional
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads
FAILED_COLUMNS: tuple[str, ...] = ("path", "run_key", "state", "reason")


@dataclass(frozen=True)
class Collection:
    """The completed runs of a results store, and the run folders that are not complete."""

    runs: pd.DataFrame
    failed: pd.DataFrame
    results_dir: Path

    @property
    def n_completed(self) -> int:
        return len(self.runs)

    def _count(self, *states: str) -> int:
        return int(self.failed["state"].isin(states).sum())

    @property
    def n_running(self) -> int:
        return self._count(RUNNING)

    @property
    def n_queued(self) -> int:
        return self._count(QUEUED)

    @property
    def n_unfinished(self) -> int:
        return self._count(UNFINISHED)

    @property
    def n_failed(self) -> int:
        """Runs that failed or were lost (crashed, killed, or left a partial or empty folder)."""
        return self._count(FAILED, LOST)

    def summary(self) -> str:
        text = f"{self.n_completed} completed run(s), {self.n_failed} failed or lost"
        if self.n_running:
            text += f", {self.n_running} running"
        if self.n_queued:
            text += f", {self.n_queued} queued"
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


def collect(results_dir: str | Path, workers: int | None = None, *, now: float | None = None,
            missing_ok: bool = False, epoch: str = "last") -> Collection:
    """Read every ``runs/<run_key>/result.json`` under ``results_dir`` (or directly under it, if it has no
    ``runs/`` folder but run folders with records), and ask the store where every other run it knows of stands
    (running, queued, unfinished, failed, lost; see the module docstring).

    ``workers`` processes parse the records (default: the usable CPU cores, for stores of at least
    ``PARALLEL_MIN_RECORDS`` runs); the result does not depend on it. ``now`` (seconds since the epoch) is the
    time claims' heartbeats are judged against (default: the clock). ``missing_ok``: a root that does not exist
    or holds no runs yet is an empty collection, not an error (the paper's leaderboard before any run).
    ``epoch``: ``last`` or ``best`` (see the module docstring)."""
    if epoch not in EPOCHS:
        raise TransferbenchError(f"--epoch must be last or best, not {epoch!r}")
    root = Path(results_dir)
    if missing_ok and not _holds_runs(root):
        return Collection(runs=runs_frame([]), failed=pd.DataFrame(columns=list(FAILED_COLUMNS)), results_dir=root)
    if not root.is_dir():
        raise TransferbenchError(f"no results folder at {root} (--results); run some experiments first or point "
                                 "--results at the folder that holds runs/")
    runs_dir, names = _run_folders(root)
    rows: list[dict[str, Any]] = []
    problems: dict[str, str | None] = {}  # run folder → None for a completed record, else why not
    for chunk_rows, chunk_problems in _read_all(runs_dir, names, workers, epoch):
        rows.extend(chunk_rows)
        problems.update(chunk_problems)
    problems.update((row.pop("run_dir"), None) for row in rows)
    failed = _not_done(root, runs_dir, problems, now)
    collection = Collection(runs=align_primary(runs_frame(rows)), failed=failed, results_dir=root)
    (log.warning if collection.n_failed else log.info)("collected %s", collection.summary())
    return collection


def _not_done(root: Path, runs_dir: Path, problems: dict[str, str | None], now: float | None) -> pd.DataFrame:
    """The ``failed`` table: every run the store knows of that is not done, with the store's state and reason."""
    if runs_dir != root / "runs":  # run folders directly in the root: only their own files say anything
        states = {k: leftover_run_folder(runs_dir / k) if p == "absent" else
                  RunState(FAILED, p, path=str(runs_dir / k / RESULT_FILE))
                  for k, p in problems.items() if p is not None}
    else:
        states = run_states(root, now=now, record_problems=problems)
    entries = [{"path": st.path, "run_key": key, "state": st.state, "reason": st.reason}
               for key, st in sorted(states.items()) if st.state not in (DONE, MISSING)]
    return pd.DataFrame(entries, columns=list(FAILED_COLUMNS))


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


def _holds_runs(root: Path) -> bool:
    """Whether ``root`` is a results store with something to collect (see ``_run_folders``)."""
    if not root.is_dir():
        return False
    try:
        _run_folders(root)
    except TransferbenchError:
        return False
    return True


def _run_folders(root: Path) -> tuple[Path, list[str]]:
    """(the folder holding the run folders, their names)."""
    if (root / "runs").is_dir():
        return root / "runs", _listing(root / "runs", "the run folder")
    names = [n for n in _listing(root, "the results folder") if n not in STORE_FOLDERS]
    if any((root / n / RESULT_FILE).is_file() for n in names):
        return root, names  # run folders directly in the root (a copied or hand-made store)
    if any((root / n).is_dir() for n in ("work", "failures", "jobs")):
        return root / "runs", []  # a sweep's store before its first run completed
    raise TransferbenchError(f"no runs/ folder and no run records in {root} (--results); point --results at the "
                             f"results root that holds runs/<run_key>/{RESULT_FILE}")


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _read_all(runs_dir: Path, names: list[str], workers: int | None, epoch: str = "last"):
    if workers is None:
        workers = default_workers() if len(names) >= PARALLEL_MIN_RECORDS else 1
    if workers <= 1 or len(names) < 2:
        return [_read_chunk(str(runs_dir), names, epoch)]
    n_chunks = min(len(names), workers * CHUNKS_PER_WORKER)
    size = -(-len(names) // n_chunks)
    chunks = [names[i : i + size] for i in range(0, len(names), size)]
    # fork: the workers need nothing but this module, and forking skips re-importing pandas in each of them
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        return list(pool.map(_read_chunk, [str(runs_dir)] * len(chunks), chunks, [epoch] * len(chunks)))


def _read_chunk(runs_dir: str, names: list[str],
                epoch: str = "last") -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    """Rows of the completed records among the run folders ``names``, in order, and why each other folder holds
    no completed record ("absent" when it has no record file; a worker's share of ``collect``)."""
    rows: list[dict[str, Any]] = []
    problems: dict[str, str | None] = {}
    for name in names:
        path = os.path.join(runs_dir, name, RESULT_FILE)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            problems[name] = "absent"
            continue
        except OSError as exc:
            problems[name] = f"unreadable JSON: {exc.strerror or exc}"
            continue
        try:
            row = record_row(load_record(data, default_run_key=name), epoch)  # the store's one judgement
        except RecordError as exc:
            problems[name] = str(exc)
            continue
        row["path"] = path
        row["run_dir"] = name
        rows.append(row)
    return rows, problems


def _load(data: bytes) -> Any:
    try:
        return _loads(data)
    except (UnicodeDecodeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise RecordError(f"unreadable JSON: {exc}") from None


def _versions_text(versions: dict[str, str]) -> str | None:
    """The record's package versions as one comparable text, ``name=version`` sorted by name."""
    return " ".join(f"{k}={versions[k]}" for k in sorted(versions)) if versions else None


def record_row(record: RunRecord, epoch: str = "last") -> dict[str, Any]:
    """One row of ``runs``: the record flattened to the columns a report needs, with the accuracies of its last
    epoch or (``epoch="best"``) the best of its evaluated epochs (:func:`best_epoch_metrics`)."""
    upstream = record.upstream_fraction
    metrics = {"top1": record.metrics.top1, "mean_per_class_acc": record.metrics.mean_per_class_acc,
               "primary": record.metrics.primary}
    if epoch == "best" and record.mode != "estimate":  # an estimate trains nothing: it has one set of numbers
        metrics = best_epoch_metrics(record)
    scores = record.metrics.extra.get("estimators")
    scores = scores if isinstance(scores, dict) else {}
    return {
        "run_key": record.run_key, "task": record.task, "method": record.method, "arch": record.arch,
        "mode": record.mode, "seed": record.seed, "target_sparsity": record.target_sparsity,
        "measured_sparsity": math.nan if record.sparsity.measured is None else record.sparsity.measured,
        **metrics, "primary_metric": record.metrics.primary_metric,
        "solver": record.solver, "upstream_top1": math.nan if upstream is None else upstream,
        "total_s": record.total_s, "created_at": record.created_at,
        "checkpoint": record.checkpoint.identity, "schema_version": record.schema_version,
        "versions": _versions_text(record.versions),
        "limit": record_limit(record),
        "protocol": protocol_label(record.deviations),
        "train_size": record_train_size(record),
        "validation_primary": _score(record.metrics.extra.get(
            f"validation_{METRIC_COLUMNS.get(record.metrics.primary_metric or '', 'top1')}")),
        **{name: _score(scores.get(name)) for name in ESTIMATORS},
    }


def _score(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def best_epoch_metrics(record: RunRecord) -> dict[str, float]:
    """``top1``, ``mean_per_class_acc`` and ``primary``, each the highest value it reached over the record's
    evaluated epochs (its ``curve``); a record that kept no per-epoch test accuracy is a one-line error."""
    column = METRIC_COLUMNS.get(record.metrics.primary_metric or "", "top1")
    best = {}
    for name in ("top1", "mean_per_class_acc"):
        values = [float(p[name]) for p in record.curve
                  if isinstance(p, dict) and "epoch" in p and isinstance(p.get(name), int | float)
                  and math.isfinite(p[name])]
        best[name] = max(values) if values else math.nan
    if math.isnan(best[column]):
        raise TransferbenchError(f"--epoch best: run {record.run_key} kept no per-epoch test {column} (its curve has "
                                 "none; an L-BFGS head or an older record); use --epoch last")
    return {**best, "primary": best[column]}


def align_primary(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with each row's ``primary`` (and ``primary_metric``) the metric its task card names, where the
    record named another one (a task card whose metric changed: caltech256, docs/protocol.md#metrics) and holds the
    card's metric too; one log line per task says how many rows were re-read."""
    from ..tasks import list_tasks

    card_metric = {t.name: t.metric for t in list_tasks(None)}
    wanted = runs["task"].map(card_metric)
    recorded = runs["primary_metric"].map(lambda m: METRIC_COLUMNS.get(m, m) if isinstance(m, str) else m)
    stale = wanted.notna() & (recorded != wanted.map(lambda m: METRIC_COLUMNS.get(m, m)))
    if not stale.any():
        return runs
    runs = runs.copy()
    for task, rows in runs[stale].groupby("task"):
        metric = card_metric[task]
        values = rows[METRIC_COLUMNS.get(metric, metric)]
        usable = values.index[values.notna()]
        runs.loc[usable, "primary"] = values[usable]
        runs.loc[usable, "primary_metric"] = metric
        log.warning("%s: %d record(s) name %s as their primary metric, but the task card now says %s "
                    "(docs/protocol.md#metrics): %d re-read with their recorded %s, %d without it left as they are",
                    task, len(rows), ", ".join(sorted(set(rows["primary_metric"].dropna().astype(str)))) or "none",
                    metric, len(usable), METRIC_COLUMNS.get(metric, metric), len(rows) - len(usable))
    return runs


def record_limit(record: RunRecord) -> int:
    """Images per split of a ``--limit`` quick try (0: the whole splits, as in records written before --limit)."""
    hparams = record.config.get("hparams")
    limit = hparams.get("limit", 0) if isinstance(hparams, dict) else 0
    return limit if isinstance(limit, int) and limit > 0 else 0


def record_train_size(record: RunRecord) -> int:
    """Training images of a low-data run (``--train-size``/``--train-per-class``: its subset's size); 0 for a run
    on the whole training split."""
    data = record.config.get("data")
    subset = data.get("train_subset") if isinstance(data, dict) else None
    size = subset.get("size") if isinstance(subset, dict) else None
    return size if isinstance(size, int) and size > 0 else 0


def parse_record(data: Any, default_run_key: str = "") -> dict[str, Any]:
    """One row of ``runs`` from a parsed ``result.json``; raises RecordError when it is not a completed run."""
    return record_row(RunRecord.from_json(data, default_run_key))


def runs_frame(rows: list[dict[str, Any]], source: str = OURS) -> pd.DataFrame:
    """The ``runs`` table (typed, sorted) from rows of :func:`parse_record`, all of one ``source``."""
    df = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    df["source"] = pd.Series(source, index=df.index, dtype="object")
    for col in ("target_sparsity", "measured_sparsity", "top1", "mean_per_class_acc", "primary", "upstream_top1",
                "total_s", "validation_primary", *ESTIMATORS):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df["seed"] = df["seed"].astype("Int64")
    df["schema_version"] = df["schema_version"].astype("Int64")
    df["limit"] = pd.to_numeric(df["limit"], errors="coerce").fillna(0).astype("int64")  # the paper's: 0, full
    df["train_size"] = pd.to_numeric(df["train_size"], errors="coerce").fillna(0).astype("int64")  # 0: whole
    df["protocol"] = df["protocol"].astype("object").fillna(PAPER_PROTOCOL)  # the paper's rows are its protocol
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True, errors="coerce", format="ISO8601")
    versions = set(df["schema_version"].dropna().astype(int))
    if any(v > SCHEMA_VERSION for v in versions):
        log.warning("records with schema_version %s (newer than %d) were read best-effort",
                    sorted(v for v in versions if v > SCHEMA_VERSION), SCHEMA_VERSION)
    keys = ["arch", "mode", "task", "method", "target_sparsity", "seed", "run_key"]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)
