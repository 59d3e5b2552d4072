"""The results store: the results root's layout, the RunRecord type, claims and the ledger, and run states.

Torch-free, so that status and the report commands read a store without loading torch. The runner writes
records through ``write_record``; everything else reads them with ``read_record`` / ``RunRecord.from_json`` and
asks ``run_states`` where each run stands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import save_npz, write_json
from .claims import (
    HEARTBEAT_S,
    append_ledger,
    check_locking,
    claim_alive,
    claim_runs,
    error_line,
    lock_held,
    read_ledger,
    write_failure,
)
from .layout import (
    PREDICTIONS_FILE,
    RESULT_FILE,
    STORE_FOLDERS,
    claim_path,
    failure_path,
    feature_cache_dir,
    ledger_path,
    record_dir,
    result_path,
    work_dir,
)
from .record import SCHEMA_VERSION, CheckpointInfo, Metrics, RecordError, RunRecord, SparsityInfo
from .states import (
    DONE,
    FAILED,
    LOST,
    MISSING,
    QUEUED,
    RUNNING,
    STALE_AFTER_S,
    STATES,
    TO_RUN,
    UNFINISHED,
    RunState,
    command_error_line,
    impossible_value,
    known_keys,
    leftover_run_folder,
    load_record,
    read_record,
    record_problem,
    run_states,
)


def write_record(root: str | Path, record: RunRecord, test_logits: np.ndarray, test_labels: np.ndarray,
                 class_names: list[str] | None = None, arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Write the run's predictions (with each logit's class name, when known, and a study's ``arrays``: see
    ``runner.study_arrays``), then its record, atomically and last: a record's presence means the run is
    complete. Returns the record's path."""
    names = {"classes": np.asarray(class_names, dtype=str)} if class_names else {}
    save_npz(record_dir(root, record.run_key) / PREDICTIONS_FILE, logits=test_logits.astype(np.float32),
             labels=test_labels.astype(np.int64), **names, **(arrays or {}))
    return write_json(result_path(root, record.run_key), record.to_json())


def existing_record(root: str | Path, key: str) -> RunRecord | None:
    """The completed record of run ``key``, or None."""
    return read_record(result_path(root, key))


__all__ = [
    "DONE",
    "FAILED",
    "HEARTBEAT_S",
    "LOST",
    "MISSING",
    "PREDICTIONS_FILE",
    "QUEUED",
    "RESULT_FILE",
    "RUNNING",
    "SCHEMA_VERSION",
    "STALE_AFTER_S",
    "STATES",
    "STORE_FOLDERS",
    "TO_RUN",
    "UNFINISHED",
    "CheckpointInfo",
    "Metrics",
    "RecordError",
    "RunRecord",
    "RunState",
    "SparsityInfo",
    "append_ledger",
    "check_locking",
    "claim_alive",
    "claim_path",
    "claim_runs",
    "command_error_line",
    "error_line",
    "existing_record",
    "failure_path",
    "feature_cache_dir",
    "impossible_value",
    "known_keys",
    "ledger_path",
    "leftover_run_folder",
    "load_record",
    "lock_held",
    "read_ledger",
    "read_record",
    "record_dir",
    "record_problem",
    "result_path",
    "run_states",
    "work_dir",
    "write_failure",
    "write_record",
]
