"""RunContext: where and how runs execute (device, determinism, workers, paths), and the machine they ran on.

Nothing here changes a run's numbers; what does is in the RunSpec (and so in its run key).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import socket
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import TransferbenchError
from .store import feature_cache_dir
from .version import __version__

log = logging.getLogger("transferbench")

# cuBLAS picks its GEMM workspaces per stream, so its reductions are only reproducible with a fixed workspace; it
# reads this variable when CUDA creates a handle, so it must be set before the first matmul on a GPU.
CUBLAS_WORKSPACE_ENV = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_CUBLAS_WORKSPACE = ":4096:8"


@dataclass
class RunContext:
    """Where and how runs execute; nothing here changes a run's numbers."""

    results: Path = Path("results")  # the results root (store layout: transferbench.store)
    data_root: Path | None = None
    cache_dir: Path | None = None  # feature cache; default <results>/cache/features
    checkpoint_dir: Path | None = None
    device: str = "auto"
    num_workers: int = field(default_factory=lambda: default_workers())
    extract_batch_size: int = 128
    force: bool = False
    verify_md5: bool = False
    allow_sparsity_gap: bool = False
    compile: bool = False  # torch.compile the model (same computation; float rounding may differ)
    # cuDNN autotuning on GPUs: faster convolutions, but float rounding then varies from run to run, so a resumed
    # full fine-tuning is no longer bit-identical to an uninterrupted one. Off: deterministic kernels.
    cudnn_benchmark: bool = False
    trackers: tuple[str, ...] = ()  # --log: experiment trackers each run reports to (transferbench.tracking)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def feature_cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else feature_cache_dir(self.results)


def allocated_cores() -> int:
    """The cores this process may use: its CPU affinity (what a SLURM allocation's cgroup grants, not the node's
    core count), capped by ``SLURM_CPUS_PER_TASK`` inside a job that sets it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cores, int(slurm)) if slurm.isdigit() and int(slurm) > 0 else cores


def default_workers(processes: int = 1) -> int:
    """Loader workers per process when none are asked for: the allocation's cores shared by ``processes``, one
    kept for each process's own work, at most 8 (beyond that a loader stops being the bottleneck)."""
    return max(0, min(8, allocated_cores() // max(processes, 1) - 1))


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


def configure_determinism(cudnn_benchmark: bool = False) -> dict[str, Any]:
    """Deterministic algorithms (the default: reruns and resumes reproduce records), or cuDNN's autotuner.

    Deterministic: cuDNN's deterministic kernels, ``torch.use_deterministic_algorithms`` (``warn_only``: an op that
    has no deterministic kernel warns instead of failing the run) and cuBLAS's fixed workspace, set here, before
    any GPU work of the run. Uninitialised memory is not filled: correct code never reads it, and the fill would
    cost a memset per allocation. Returns ``determinism_state()`` (what the record says).
    """
    deterministic = not cudnn_benchmark
    if deterministic and CUBLAS_WORKSPACE_ENV not in os.environ:
        if torch.cuda.is_initialized():  # cuBLAS handles made before this read the old (unset) value
            log.warning("%s set after CUDA started in this process: matmuls may not be reproducible",
                        CUBLAS_WORKSPACE_ENV)
        os.environ[CUBLAS_WORKSPACE_ENV] = DETERMINISTIC_CUBLAS_WORKSPACE
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    return determinism_state()


def determinism_state() -> dict[str, Any]:
    """How this process picks its kernels now (each run's record carries it)."""
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cublas_workspace_config": os.environ.get(CUBLAS_WORKSPACE_ENV)}


def precision_policy(device_type: str, precision: str) -> dict[str, Any]:
    """What decides the float arithmetic of a run with ``precision`` (fp32, tf32, bf16 or fp16) on ``device_type``:
    pure, so the feature-cache key and the record carry it. fp32 is true fp32 (TensorFloat-32 off for cuDNN
    convolutions and matmuls); tf32 turns TF32 on (CUDA only); bf16 runs the forward pass under bfloat16 autocast;
    fp16 under float16 autocast, training with a dynamic loss scale (float16's range is too short for gradients)."""
    policy = {"device_type": device_type, "precision": precision,
              "tf32": device_type == "cuda" and precision == "tf32",
              "autocast": AUTOCAST_DTYPES.get(precision)}
    if precision == "fp16":  # added only here, so the keys of the other policies stay as they were
        policy["loss_scaling"] = "dynamic"
    return policy


AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward pass's autocast for ``precision`` (disabled for fp32 and tf32)."""
    dtype = getattr(torch, AUTOCAST_DTYPES.get(precision, "bfloat16"))
    return torch.autocast(device.type, dtype=dtype, enabled=precision in AUTOCAST_DTYPES)


def apply_precision(device_type: str, precision: str) -> dict[str, Any]:
    """Set this process's TF32 switches for ``precision`` (cuDNN's default is TF32 on) and return the policy."""
    policy = precision_policy(device_type, precision)
    torch.backends.cudnn.allow_tf32 = policy["tf32"]
    torch.backends.cuda.matmul.allow_tf32 = policy["tf32"]
    return policy


def check_capabilities(device: torch.device, precisions: set[str], compile: bool,
                       engines: Collection[str] = ()) -> None:
    """One-line errors, before any work, for what this machine cannot run as asked (``device`` is resolved, so an
    index that does not exist was refused already; ``engines``: the runs' feature-extraction engines)."""
    if "semi-structured" in engines:
        check_semi_structured(device)
    if "tf32" in precisions and device.type != "cuda":
        raise TransferbenchError(f"--precision tf32 is TensorFloat-32 on CUDA GPUs; on {device} use --precision fp32")
    if "fp16" in precisions and device.type != "cuda":
        raise TransferbenchError(f"--precision fp16 (float16 with loss scaling) is for GPUs without bfloat16; on "
                                 f"{device} use --precision fp32 or bf16")
    if device.type != "cuda":
        return
    name = torch.cuda.get_device_name(device)
    if "bf16" in precisions and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise TransferbenchError(f"--precision bf16: {device} ({name}) has no native bfloat16 (Ampere or newer "
                                 "has); use --precision fp16 (float16 with loss scaling) or --precision fp32")
    if "tf32" in precisions and torch.cuda.get_device_capability(device)[0] < 8:
        raise TransferbenchError(f"--precision tf32: {device} ({name}) has no TensorFloat-32 (Ampere or newer "
                                 "has); use --precision fp32")
    if compile and not triton_available():
        raise TransferbenchError(f"--compile on {device} needs Triton, which is not installed: pip install triton, "
                                 "or drop --compile")


def check_semi_structured(device: torch.device) -> None:
    """``--engine semi-structured``'s 2:4 sparse kernels (cuSPARSELt, CUTLASS) need an NVIDIA GPU of compute capability
    8.0 or more (Ampere, Ada, Hopper, ...)."""
    where = str(device)
    if device.type == "cuda":
        if torch.version.hip is None and torch.cuda.get_device_capability(device) >= (8, 0):
            return
        major, minor = torch.cuda.get_device_capability(device)
        where = f"{device} ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor})"
    raise TransferbenchError(f"--engine semi-structured needs an NVIDIA GPU of compute capability 8.0+ (Ampere or "
                             f"newer) for 2:4 sparse kernels; on {where} use --engine torch")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def select_device(device: torch.device) -> None:
    """Make ``cuda:N`` the current device, so that nothing (a stream, a handle, a default ``cuda`` tensor) opens a
    context on GPU 0 of a job given another GPU."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


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
