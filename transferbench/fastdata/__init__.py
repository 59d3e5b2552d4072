"""Optional fast data paths. FFCV (``pip install 'transferbench[ffcv]'``) is imported lazily, only when a command
asks for it (``transferbench data convert``, ``transferbench run --loader ffcv``): ``import transferbench`` never
imports ffcv, numba or OpenCV.

Where the ``.beton`` files live (written by ``convert_task``, found again by ``find_beton``)::

    <ffcv root>/<task>/<split>_r<max_resolution>_q<jpeg_quality>.beton   (+ .json sidecar)   --write-mode jpg
    <ffcv root>/<task>/<split>_r<max_resolution>_raw.beton                                  --write-mode raw

with ``<ffcv root>`` = ``$TRANSFERBENCH_FFCV_DIR`` if set, else ``<data-root>/.ffcv``, else (mini-tasks without a
data root) ``~/.cache/transferbench/ffcv``. ``transferbench data convert --out DIR`` writes under DIR instead; runs
then find it with ``TRANSFERBENCH_FFCV_DIR=DIR``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import TransferbenchError

DEFAULT_MAX_RESOLUTION = 512
DEFAULT_QUALITY = 90
WRITE_MODES = ("jpg", "raw")  # raw: decoded pixels, lossless and ~2x faster to load than jpg, ~7x the disk of jpg q90
SIDECAR_FORMAT = 1  # bump when what a .beton holds changes, so older files are refused as stale
FFCV_DIR_ENV = "TRANSFERBENCH_FFCV_DIR"

INSTALL_HINT = ("{what} needs FFCV: pip install 'transferbench[ffcv]' (system packages libopencv-dev "
                "libturbojpeg0-dev pkg-config); or use --loader torchvision")


def ffcv_available() -> bool:
    """Whether ``import ffcv`` can work, without importing it (importing compiles numba code: seconds)."""
    return importlib.util.find_spec("ffcv") is not None


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Undo ffcv's ``torch.set_num_threads``: importing ffcv sets torch to 1 thread, and every Loader (created or
    iterated) to its number of workers, for the whole process. Left alone, the model would train and extract on
    that many threads, not on the job's cores (and numbers would differ in the last float bits from a run that
    never touched ffcv)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def require_ffcv(what: str = "--loader ffcv") -> None:
    """Import ffcv or raise the one-line install hint (a broken build counts as missing)."""
    try:
        with torch_threads_kept():
            import ffcv  # noqa: F401
    except Exception:  # ImportError, or an OSError from a libffcv built against absent system libraries
        raise TransferbenchError(INSTALL_HINT.format(what=what)) from None


def ffcv_root(data_root: str | Path | None) -> Path:
    env = os.environ.get(FFCV_DIR_ENV)
    if env:
        return Path(env).expanduser()
    if data_root is not None:
        return Path(data_root).expanduser() / ".ffcv"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "transferbench" / "ffcv"


def beton_path(root: Path, task: str, split: str, max_resolution: int, quality: int, write_mode: str = "jpg") -> Path:
    encoding = f"q{quality}" if write_mode == "jpg" else write_mode
    return Path(root) / task / f"{split}_r{max_resolution}_{encoding}.beton"


def sidecar_path(beton: Path) -> Path:
    return beton.with_suffix(".json")


def labels_digest(labels: list[int]) -> str:
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def convert_command(task: str, data_root: str | Path | None) -> str:
    root = f" --data-root {data_root}" if data_root is not None else ""
    return f"transferbench data convert --task {task}{root}"
