"""Data-parallel upstream training: one process per device, launched by ``torchrun`` or by a SLURM multi-task job.

Both launchers describe the job in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``; submitit's ``TorchDistributedEnvironment().export()`` sets them from SLURM's variables), so the
training code only reads the environment. The recipe's batch size is the *global* batch: each of ``w`` ranks takes
``B/w`` samples of every global batch (``ShardedBatches``), DDP averages the gradients, and the run is the same
run as one process with batch ``B`` (exactly, with ``sync_bn``: BatchNorm statistics over the global batch).

Rank consistency of the pruners follows from that: every rank holds the same weights after every step (DDP applies
the same averaged gradient), masks are computed from weights, from all-reduced gradients (RigL's growth criterion
reads them after DDP's reduction) or from gathered ones (WoodFisher: each rank computes its share of the N
gradients), and the random draws (RigL's initial masks, CrAM's compression target) come from generators seeded
alike on every rank. ``check_same_on_every_rank`` verifies it at every epoch's end.
"""

from __future__ import annotations

import atexit
import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..context import resolve_device
from ..errors import TransferbenchError

# Rank 0 evaluates, recalibrates and writes the checkpoints while the others wait at a barrier: minutes at
# ImageNet scale, longer than NCCL's default 10-minute collective timeout.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def join_world(device: str) -> tuple[World, torch.device]:
    """The job's world from the environment and this process's device; initialises ``torch.distributed`` (NCCL on
    GPUs, gloo on CPUs) when the job has several processes. The process group lives as long as the process (a
    driver may train several runs in one job; re-creating a group on the launcher's store is not reliable)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if size == 1:
        return World(), dev
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        visible = torch.cuda.device_count()
        if visible > 1 and local_rank >= visible:
            raise TransferbenchError(f"LOCAL_RANK {local_rank} but {visible} GPUs visible: one process per GPU "
                                     "(torchrun --nproc_per_node, or --gpus on SLURM)")
        # each process sees every GPU of the node (torchrun) and takes its own, or sees only its own (sites that
        # bind one GPU per SLURM task)
        dev = torch.device("cuda", local_rank if visible > 1 else 0)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise TransferbenchError(f"WORLD_SIZE={size} but {', '.join(missing)} unset: launch with torchrun or "
                                     "`transferbench upstream --executor slurm`")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
        atexit.register(_leave_world)
    return World(dist.get_rank(), dist.get_world_size(), local_rank), dev


def _leave_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(world: World, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(world: World, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A sha256 of tensors' exact bytes (names sorted), to compare states across ranks."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_same_on_every_rank(world: World, what: str, tensors: dict[str, torch.Tensor]) -> None:
    """Raise if ``tensors`` differ between ranks (a pruning hook that is not rank-consistent)."""
    digests = gather_objects(world, tensor_digest(tensors))
    if len(set(digests)) > 1:
        raise RuntimeError(f"{what} differ between ranks ({len(set(digests))} versions among {world.size} ranks): "
                           "a pruning step was not rank-consistent")


class _SumOverRanks(torch.autograd.Function):
    """y = Σ_ranks x, differentiable: every rank's y depends on every rank's x, so dL/dx = Σ_ranks dL/dy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch of a CPU (gloo) job: ``torch.nn.SyncBatchNorm`` runs on GPUs only.

    The per-channel sum, sum of squares and count are summed over ranks by a differentiable all-reduce, so the
    backward pass is synchronised too; running statistics
    are updated with the unbiased global variance and ``momentum`` as ``BatchNorm2d`` does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        stats = _SumOverRanks.apply(stats)
        channels = x.shape[1]
        n = stats[-1]
        mean = stats[:channels] / n
        var = stats[channels:2 * channels] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach() * n / (n - 1), alpha=momentum)
        shape = (1, channels, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch: torch's SyncBatchNorm on GPUs, ``GlooSyncBatchNorm`` on CPUs."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            convert_sync_batchnorm(child, device)
    return model



def revert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Plain BatchNorm2d again (same statistics and parameters): what rank 0 alone evaluates, recalibrates and
    saves must not wait for the other ranks."""
    for name, child in model.named_children():
        if isinstance(child, nn.SyncBatchNorm | GlooSyncBatchNorm):
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            plain.load_state_dict(child.state_dict())
            setattr(model, name, plain.to(next(child.buffers()).device))
        else:
            revert_sync_batchnorm(child)
    return model
