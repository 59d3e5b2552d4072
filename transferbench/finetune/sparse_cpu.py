"""Frozen-feature extraction with DeepSparse, a sparsity-aware CPU runtime (the paper's linear-probe set-up).

DeepSparse 1.8 (Neural Magic; deprecated upstream, last release 2024) needs numpy<2, so it cannot share this
environment. It lives in a virtualenv of its own, named by $TRANSFERBENCH_DEEPSPARSE_PYTHON; the backbone is
exported to ONNX here and a worker process in that environment runs it (``deepsparse_worker.py``), with
batches passed over pipes. The features match PyTorch's to float tolerance (tests/test_sparse_cpu.py).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import TransferbenchError
from ..progress import progress
from .workers import leave_signals_to_main

log = logging.getLogger("transferbench")
ENV_PYTHON = "TRANSFERBENCH_DEEPSPARSE_PYTHON"
SETUP = ("python3 -m venv ~/.venvs/deepsparse && ~/.venvs/deepsparse/bin/pip install deepsparse==1.8.0 && export "
         f"{ENV_PYTHON}=~/.venvs/deepsparse/bin/python")
WORKER = Path(__file__).with_name("deepsparse_worker.py")


def deepsparse_python() -> str:
    python = os.environ.get(ENV_PYTHON)
    if not python:
        raise TransferbenchError(f"--engine deepsparse needs DeepSparse in its own environment (it requires numpy<2): "
                                 f"{SETUP}")
    path = shutil.which(os.path.expanduser(python))
    if path is None:
        raise TransferbenchError(f"${ENV_PYTHON}={python} is not an executable Python; {SETUP}")
    return path


class _Backbone(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def export_backbone(model: torch.nn.Module, path: Path, example: torch.Tensor) -> Path:
    """The backbone (``forward_features``) as ONNX for a fixed input shape; pruned weights stay exact zeros."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise TransferbenchError("--engine deepsparse exports the backbone to ONNX: pip install onnx") from None
    module = _Backbone(model).eval().float()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; its output is what DeepSparse reads
        torch.onnx.export(module, (example.float().contiguous(),), str(path), dynamo=False, opset_version=13,
                          input_names=["images"], output_names=["features"], do_constant_folding=True)
    return path


class DeepSparseEngine:
    """A DeepSparse worker process compiled for one ONNX model and batch size."""

    def __init__(self, onnx_path: Path, batch_size: int, cores: int | None = None) -> None:
        self.batch_size = batch_size
        cores = cores or _allocated_cores()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close(); the worker writes to it)
        self.proc = subprocess.Popen([deepsparse_python(), str(WORKER), str(onnx_path), str(batch_size), str(cores)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        self._read_frame()  # waits until the engine is compiled, or raises with the worker's error

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n < self.batch_size:  # the engine is compiled for one batch size: pad the last batch
            batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), batch.dtype)])
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(batch, dtype=np.float32), allow_pickle=False)
        try:
            self.proc.stdin.write(struct.pack("<Q", buf.tell()) + buf.getvalue())
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._fail()
        return np.load(io.BytesIO(self._read_frame()), allow_pickle=False)[:n]

    def _read_frame(self) -> bytes:
        header = self.proc.stdout.read(8)
        if len(header) < 8:
            self._fail()
        (length,) = struct.unpack("<Q", header)
        return self.proc.stdout.read(length) if length else b""

    def _fail(self) -> None:
        self.proc.wait(timeout=30)
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().decode(errors="replace").splitlines() if line.strip()]
        raise TransferbenchError(f"the DeepSparse worker ({self.proc.args[0]}) stopped: "
                                 f"{lines[-1] if lines else f'exit status {self.proc.returncode}'}; check "
                                 f"${ENV_PYTHON} ({SETUP})")

    def peak_rss_mb(self) -> float | None:
        """The worker's peak resident memory (Linux ``VmHWM``), for benchmarks."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        kb = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
        return int(kb) / 1024 if kb else None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(struct.pack("<Q", 0))
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.stderr.close()

    def __enter__(self) -> DeepSparseEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _allocated_cores() -> int:
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if cpus.isdigit():
        return int(cpus)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def extract_deepsparse(model: torch.nn.Module, dataset: Dataset, batch_size: int, num_workers: int,
                       desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``features.extract`` on DeepSparse: same data order, transforms and output, fp32 on the CPU."""
    python = deepsparse_python()  # fail before exporting anything
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        worker_init_fn=leave_signals_to_main)
    feats, labels = [], []
    with tempfile.TemporaryDirectory(prefix="tb-deepsparse-") as tmp:
        engine = None
        try:
            for images, targets in progress(loader, desc=desc, unit="batch"):
                if engine is None:
                    example = torch.zeros(batch_size, *images.shape[1:])
                    onnx_path = export_backbone(model, Path(tmp) / "backbone.onnx", example)
                    log.info("features: DeepSparse (%s) compiling %s for batch %d", python, onnx_path.name,
                             batch_size)
                    engine = DeepSparseEngine(onnx_path, batch_size)
                feats.append(torch.from_numpy(engine(images.numpy())).reshape(len(images), -1))
                labels.append(targets)
        finally:
            if engine is not None:
                engine.close()
    return torch.cat(feats), torch.cat(labels).long()
