"""The results root on disk. Every path of the store is built here and nowhere else.

    <root>/runs/<key>/result.json       the run's record (RunRecord), written last and atomically: done
    <root>/runs/<key>/predictions.npz   test logits, labels and class names, written just before the record
    <root>/work/<key>/                  a run in progress: training state, .lock (flock) and claim.json
    <root>/failures/<key>.json          a sweep job's failure: error line, traceback, job id
    <root>/jobs/ledger.jsonl            one line per submitted sweep job (its run keys, id, executor, logs)
    <root>/cache/features/              the linear probes' feature cache
    <root>/tensorboard/<key>/           `--log tensorboard`'s event files (written by transferbench.tracking)

A run key is one file name (``names.check_component``), and every folder a run writes to resolves inside the
results root (``names.inside``: a symlink out of it is refused), so no key, however it was made, writes elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from ..names import check_component, inside

RUNS, WORK, FAILURES, JOBS, CACHE = "runs", "work", "failures", "jobs", "cache"
RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.npz"
CLAIM_FILE = "claim.json"
LOCK_FILE = ".lock"
LEDGER = Path(JOBS) / "ledger.jsonl"
# Folders of a results root that are not run folders: the store's own and the report's outputs (a root without
# runs/ whose run folders sit directly in it is read by `collect`, and must not mistake these for runs)
STORE_FOLDERS = frozenset({WORK, FAILURES, JOBS, CACHE, "leaderboards", "figures", "compare", "beyond", "bias",
                           "report", "upstream"})  # upstream: a sweep's upstream stage (dispatch.stages.upstream_store)


def _run_path(root: str | Path, folder: str, key: str, suffix: str = "") -> Path:
    """``<root>/<folder>/<key><suffix>``, the key checked lexically only (one component: cannot leave the folder)."""
    return Path(root) / folder / (check_component(key, "run key") + suffix)


def _contained(root: str | Path, path: Path) -> Path:
    """``path``, refused when a symlink takes it out of the results root (``names.inside``)."""
    return inside(root, path, "results root (--results)")


def record_dir(root: str | Path, key: str) -> Path:
    return _contained(root, _run_path(root, RUNS, key))


def result_path(root: str | Path, key: str) -> Path:
    """The record's path, for reading: checked lexically only (``status`` asks for 100k of them; resolving each
    would cost seconds). Writers go through ``record_dir`` first, which follows symlinks (``write_record``)."""
    return _run_path(root, RUNS, key) / RESULT_FILE


def work_dir(root: str | Path, key: str) -> Path:
    return _contained(root, _run_path(root, WORK, key))


def claim_path(root: str | Path, key: str) -> Path:
    return work_dir(root, key) / CLAIM_FILE


def lock_path(root: str | Path, key: str) -> Path:
    return work_dir(root, key) / LOCK_FILE


def failure_path(root: str | Path, key: str) -> Path:
    return _contained(root, _run_path(root, FAILURES, key, ".json"))


def ledger_path(root: str | Path) -> Path:
    return Path(root) / LEDGER


def feature_cache_dir(root: str | Path) -> Path:
    return _contained(root, Path(root) / CACHE / "features")
