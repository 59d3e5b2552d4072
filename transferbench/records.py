"""Result records: one ``runs/<run_key>/result.json`` per run, written last and atomically.

The record's presence means the run is complete: predictions are written before it, and nothing is
written to ``runs/`` by a run that fails.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import save_npz, write_json
from .runspec import SCHEMA_VERSION, RunSpec

RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.npz"


def result_path(spec: RunSpec, out: str | Path) -> Path:
    return spec.record_dir(out) / RESULT_FILE


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The record at ``path`` if it is complete and parseable, else None."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("status") == "completed" else None


def existing_record(spec: RunSpec, out: str | Path) -> dict[str, Any] | None:
    return read_record(result_path(spec, out))


def package_versions() -> dict[str, str]:
    import scipy
    import sklearn
    import torch
    import torchvision

    return {
        "transferbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
    }


def hardware(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        if name in os.environ:  # provenance: which job (and how many requeues) produced the record
            info[name.lower()] = os.environ[name]
    return info


def write_result(
    spec: RunSpec,
    out: str | Path,
    record: dict[str, Any],
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    class_names: list[str] | None = None,
) -> Path:
    """Write predictions (with the name of each logit's class, when known), then the record (atomically, last).
    Returns the record's path."""
    rdir = spec.record_dir(out)
    names = {"classes": np.asarray(class_names, dtype=str)} if class_names else {}
    save_npz(rdir / PREDICTIONS_FILE, logits=test_logits.astype(np.float32), labels=test_labels.astype(np.int64),
             **names)
    full = {
        "schema_version": SCHEMA_VERSION,
        "run_key": spec.run_key,
        "status": "completed",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "task": spec.task,
        "method": spec.checkpoint.method,
        "arch": spec.checkpoint.arch,
        "mode": spec.mode,
        "seed": spec.seed,
        "target_sparsity": spec.checkpoint.sparsity,
        "predictions": PREDICTIONS_FILE,
        "versions": package_versions(),
        **record,
    }
    return write_json(rdir / RESULT_FILE, full)
