"""How an upstream run executes: loader workers, precision, memory format, BatchNorm across ranks.

Each switch that can change a number (precision, channels_last, sync_bn) is part of the run's identity (the resume
state's key) and of the checkpoint's metadata; the worker count is recorded too but cannot change a number (every
sample's augmentation is seeded by its index, ``transferbench.seeding``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..bounds import WORKERS, Bounds, check_fields

if TYPE_CHECKING:  # torch-free at import: `upstream --help` reads PRECISIONS and LOADERS
    import torch

PRECISIONS = ("fp32", "bf16", "fp64")
LOADERS = ("torchvision", "ffcv")


def _option(default: Any, bounds: Bounds) -> Any:
    """A loop option and its schema, checked by ``LoopOptions.__post_init__``."""
    return field(default=default, metadata={"bounds": bounds})


def _option_source(name: str) -> str:
    """An option as errors name it: its `upstream` flag (a sweep's upstream entry names its key ``name``)."""
    return f"--{name.replace('_', '-')}"


@dataclass(frozen=True)
class LoopOptions:
    """``workers``: loader processes per rank (None: up to 8 per GPU process, none on a CPU, where the model
    itself needs the cores). ``precision``: fp32; bf16 autocast (forward in bfloat16, weights, gradients and the
    optimizer in fp32); fp64 for numerical reference checks (the data-parallel equivalence test). ``sync_bn``:
    BatchNorm statistics over the global batch; off by default, as the published runs normalised per GPU.
    ``loader``: torchvision's decoding in loader workers, or FFCV's over ``data convert --task imagenet``'s files
    (the training batches only; evaluation, BN recalibration and Fisher batches read the image folders)."""

    workers: int | None = _option(None, WORKERS)
    precision: str = _option("fp32", Bounds(str, choices=PRECISIONS))
    channels_last: bool = _option(False, Bounds(bool))
    sync_bn: bool = _option(False, Bounds(bool))
    loader: str = _option("torchvision", Bounds(str, choices=LOADERS))

    def __post_init__(self) -> None:
        check_fields(self, _option_source)

    def numbers(self) -> dict:
        """The switches that change the numbers a run produces (part of its identity)."""
        return {"precision": self.precision, "channels_last": self.channels_last, "sync_bn": self.sync_bn,
                "loader": self.loader}

    def loader_workers(self, device: torch.device, local_processes: int = 1) -> int:
        if self.workers is not None:
            return self.workers
        if device.type != "cuda":
            return 0
        from ..context import default_workers  # torch-free import of this module (the CLI builds options)

        return max(1, default_workers(local_processes))

    def to_dict(self) -> dict:
        return asdict(self)
