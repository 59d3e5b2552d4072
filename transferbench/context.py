"""RunContext: where and how runs execute (device, determinism, workers, paths), and the machine they ran on.

Nothing here changes a run's numbers; what does is in the RunSpec (and so in its run key).
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import TransferbenchError
from .store import feature_cache_dir
from .version import __version__


@dataclass
class RunContext:
    """Where and how runs execute; nothing here changes a run's numbers."""

    results: Path = Path("results")  # the results root (store layout: transferbench.store)
    data_root: Path | None = None
    cache_dir: Path | None = None  # feature cache; default <results>/cache/features
    checkpoint_dir: Path | None = None
    device: str = "auto"
    num_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    extract_batch_size: int = 128
    force: bool = False
    verify_md5: bool = False
    allow_sparsity_gap: bool = False
    compile: bool = False  # torch.compile the model (same computation; float rounding may differ)
    # cuDNN autotuning on GPUs: faster convolutions, but float rounding then varies from run to run, so a resumed
    # full fine-tuning is no longer bit-identical to an uninterrupted one. Off: deterministic kernels.
    cudnn_benchmark: bool = False

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def feature_cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else feature_cache_dir(self.results)


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when one is visible), ``cpu``, ``cuda`` or ``cuda:N``; anything else is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TransferbenchError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TransferbenchError(f"--device {name} requested but {torch.cuda.device_count()} CUDA GPU(s) are "
                                 "visible; use --device cpu or a visible index")
    if device.type not in ("cpu", "cuda"):
        raise TransferbenchError(f"--device {name}: only cpu and cuda are supported")
    return device


def configure_determinism(cudnn_benchmark: bool = False) -> None:
    """Deterministic cuDNN kernels (the default: reruns and resumes reproduce records), or its autotuner."""
    torch.backends.cudnn.deterministic = not cudnn_benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark


def package_versions() -> dict[str, str]:
    """The versions a record is written with (the report's versions table reads them back)."""
    import numpy as np
    import scipy
    import sklearn
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
