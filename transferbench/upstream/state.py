"""The resume state of an upstream run, written atomically after every epoch and read back by the same command
after a crash, a ``kill -9``, a preemption or a SLURM requeue.

It holds everything the rest of the run depends on: the weights, the optimizer (momentum), the pruner (masks, AC/DC's
phase and dense snapshot, LTH's round and rewind point, ...), the named random generators of the run (WoodFisher's
Fisher-batch draws, CrAM's compression targets) and the torch RNG of every rank. The training order needs no state:
it is a function of (seed, epoch) (``data.ShardedBatches``). So on a CPU a resumed run ends with the same bits as an
uninterrupted one.

The state lives in ``<checkpoint folder>/work/<checkpoint name>-<identity>/``, where the identity digests everything
that changes the numbers (recipe, method knobs, sparsities, seed, precision switches, world size): the same command
resumes, a changed one starts afresh in its own folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import set_aside, torch_save, write_json
from ..errors import TransferbenchError, is_disk_error
from ..names import check_component, inside
from ..pruning.base import Pruner
from .distributed import World, gather_objects

log = logging.getLogger("transferbench")

STATE_FILE = "upstream_state.pt"
PROGRESS_FILE = "progress.json"  # a few bytes beside the state, for `status` (the state can be gigabytes)
STATE_VERSION = 1


def run_identity(**what_changes_the_numbers: Any) -> str:
    """A digest of the run's configuration (JSON with sorted keys; non-JSON values by their str)."""
    text = json.dumps(what_changes_the_numbers, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def state_dir(folder: Path, name: str, identity: str) -> Path:
    """``<folder>/work/<name>-<identity>``: where a training keeps its resume state, inside the upstream folder."""
    return inside(folder, Path(folder) / "work" / check_component(f"{name}-{identity[:12]}", "upstream run"),
                  "upstream folder (--out)")


@dataclass(frozen=True)
class Resumed:
    epoch: int  # epochs finished before this process started
    train_seconds: float
    losses: list[float]  # mean training loss of every finished epoch
    selection: dict[str, Any] | None = None  # the kept epoch of a run that chooses on validation data (selection)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_state(folder: Path, world: World, device: torch.device, *, epoch: int, epochs: int, model: nn.Module,
               optimizer: torch.optim.Optimizer, pruner: Pruner, generators: dict[str, torch.Generator],
               train_seconds: float, losses: list[float], selection: dict[str, Any] | None = None) -> None:
    """Write the state after ``epoch`` epochs (rank 0 writes; every rank contributes its RNG state); ``selection``:
    the kept epoch's state of a run that chooses its checkpoint on validation data (``upstream.selection``)."""
    rngs = gather_objects(world, _rng_state(device))
    if world.is_main:
        torch_save(Path(folder) / STATE_FILE, {
            "version": STATE_VERSION, "epoch": epoch, "epochs": epochs, "world_size": world.size,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "pruner": pruner.state_dict(),
            "generators": {name: g.get_state() for name, g in generators.items()},
            "rng": rngs, "train_seconds": train_seconds, "losses": losses,
            **({"selection": selection} if selection is not None else {}),
        })
        write_json(Path(folder) / PROGRESS_FILE, {"epoch": epoch, "epochs": epochs, "world_size": world.size})
    world.barrier()  # no rank starts the next epoch before the state that covers it is on disk


def load_state(folder: Path, world: World, device: torch.device, *, model: nn.Module,
               optimizer: torch.optim.Optimizer, pruner: Pruner,
               generators: dict[str, torch.Generator]) -> Resumed | None:
    """Restore the state saved in ``folder``, if any; returns where it left off.

    A state that cannot be read or applied (truncated, garbage, another model) would fail every rerun: rank 0 sets
    it aside (``atomic.set_aside``, one note line) and every rank starts over with the model, optimizer, pruner and
    generators as they were. A state of another version or world size is refused (TransferbenchError).
    """
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    before = _snapshot(model, optimizer, pruner, generators)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
            raise ValueError("not an upstream resume state")
        _check_compatible(state, path, world)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        pruner.load_state_dict(state["pruner"])
        for name, generator in generators.items():
            generator.set_state(state["generators"][name])
        _set_rng_state(state["rng"][world.rank], device)
        resumed = Resumed(state["epoch"], float(state["train_seconds"]), [float(x) for x in state["losses"]],
                          state.get("selection"))
    except TransferbenchError:
        raise
    except Exception as exc:  # whatever a corrupt file raises (zip, unpickling, shapes, missing keys)
        if isinstance(exc, FileNotFoundError) and not world.is_main:  # rank 0 set it aside meanwhile
            _restore(before, model, optimizer, pruner, generators)
            return None
        if is_disk_error(exc):  # the disk, not the file: the one-line error of the CLI
            raise
        _restore(before, model, optimizer, pruner, generators)
        if world.is_main:
            set_aside(path, f"{type(exc).__name__}: {exc}")
        return None
    log.info("upstream: resuming from %s after epoch %d of %d", path, state["epoch"], state["epochs"])
    return resumed


def _check_compatible(state: dict, path: Path, world: World) -> None:
    if state.get("version") != STATE_VERSION:
        raise TransferbenchError(f"{path} was written by another transferbench version; delete it to start afresh")
    if state["world_size"] != world.size:
        raise TransferbenchError(
            f"{path} is the state of a run on {state['world_size']} processes, this job has {world.size}: resume "
            "it with the same number of GPUs (the per-GPU batch and BatchNorm statistics would differ), or delete "
            "the folder to start afresh")


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, pruner: Pruner,
              generators: dict[str, torch.Generator]) -> tuple:
    """Copies of what ``load_state`` changes, to undo a state that failed halfway through being applied."""
    return ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(optimizer.state_dict()),
            copy.deepcopy(pruner.state_dict()), {name: g.get_state() for name, g in generators.items()})


def _restore(before: tuple, model: nn.Module, optimizer: torch.optim.Optimizer, pruner: Pruner,
             generators: dict[str, torch.Generator]) -> None:
    model.load_state_dict(before[0])
    optimizer.load_state_dict(before[1])
    pruner.load_state_dict(before[2])
    for name, generator in generators.items():
        generator.set_state(before[3][name])


def upstream_progress(folder: Path) -> tuple[int, int] | None:
    """(epochs finished, epochs in all) of the run whose state is in ``folder``; None when it has none."""
    path = Path(folder) / PROGRESS_FILE
    if not path.is_file():
        return None
    progress = json.loads(path.read_text())
    return int(progress["epoch"]), int(progress["epochs"])


def discard_state(folder: Path, world: World) -> None:
    """After the checkpoint is registered: the state is no longer needed (it can be as large as the model ×3)."""
    if world.is_main:
        shutil.rmtree(folder, ignore_errors=True)
