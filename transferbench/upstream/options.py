"""How an upstream run executes: loader workers, precision, memory format, BatchNorm across ranks.

Each switch that can change a number (precision, channels_last, sync_bn) is part of the run's identity (the resume
state's key) and of the checkpoint's metadata; the worker count is recorded too but cannot change a number (every
sample's augmentation is seeded by its index, ``transferbench.seeding``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..errors import TransferbenchError

if TYPE_CHECKING:  # torch-free at import: `upstream --help` reads PRECISIONS and LOADERS
    import torch

PRECISIONS = ("fp32", "bf16", "fp64")
LOADERS = ("torchvision", "ffcv")


@dataclass(frozen=True)
class LoopOptions:
    """``workers``: loader processes per rank (None: up to 8 per GPU process, none on a CPU, where the model
    itself needs the cores). ``precision``: fp32; bf16 autocast (forward in bfloat16, weights, gradients and the
    optimizer in fp32); fp64 for numerical reference checks (the data-parallel equivalence test). ``sync_bn``:
    BatchNorm statistics over the global batch; off by default, as the published runs normalised per GPU.
    ``loader``: torchvision's decoding in loader workers, or FFCV's over ``data convert --task imagenet``'s files
    (the training batches only; evaluation, BN recalibration and Fisher batches read the image folders)."""

    workers: int | None = None
    precision: str = "fp32"
    channels_last: bool = False
    sync_bn: bool = False
    loader: str = "torchvision"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise TransferbenchError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.loader not in LOADERS:
            raise TransferbenchError(f"--loader {self.loader!r}: choose one of {', '.join(LOADERS)}")
        if self.workers is not None and self.workers < 0:
            raise TransferbenchError(f"--workers {self.workers}: give 0 (load on the main process) or more")

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
