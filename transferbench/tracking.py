"""Experiment-tracker logging: ``--log wandb|tensorboard|mlflow`` for `run`, `upstream` and `sweep`.

A run reports its per-epoch curve points (the ones its record keeps: epoch, lr, train_loss, top1, ...) and, at the
end, its final metrics to every tracker asked for. Trackers only watch: nothing here changes a number or a run key,
and a run's record stays the source of truth (it names the trackers in its ``config.trackers``).

Each backend is an optional extra (``pip install 'transferbench[wandb]'``, ``[tensorboard]``, ``[mlflow]``),
imported only when a run starts with it. Where each writes follows the backend's own conventions:

- wandb: project ``$WANDB_PROJECT`` (default ``transferbench``), files under ``$WANDB_DIR`` (default ``./wandb``),
  ``WANDB_MODE=offline`` for machines without network (``wandb sync`` uploads later); the final metrics go to the
  run's summary.
- tensorboard: event files in ``<folder>/tensorboard/<run name>/`` (``folder``: the results root of a run, the
  checkpoint folder of an upstream training); the final metrics as ``final/<name>`` scalars at the last step.
- mlflow: ``$MLFLOW_TRACKING_URI`` (default MLflow's own, ``sqlite:///mlflow.db``), experiment
  ``$MLFLOW_EXPERIMENT_NAME`` (default ``transferbench``), the config as parameters; the final metrics logged at
  the last step; the run's status FAILED when the run raised.

This module imports no backend, torch or numpy at import time: the CLI parses ``--log`` without them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from .errors import TransferbenchError

log = logging.getLogger("transferbench")

# MLflow keeps parameter values up to 6000 characters in recent versions, 500 in old ones
MLFLOW_PARAM_CHARS = 500
MLFLOW_BATCH = 100  # log_batch takes at most 1000 metrics and 100 parameters per call


class Tracker(Protocol):
    """One backend's view of one run: ``start`` once, ``log`` per curve point, ``finish`` once."""

    def start(self, run_name: str, config: Mapping[str, Any]) -> None: ...

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def finish(self, summary: Mapping[str, float], failed: bool = False) -> None: ...


class WandbTracker:
    """Weights & Biases: one W&B run per transferbench run (several may be open in one process, e.g. a sweep's
    debug executor, hence ``reinit="create_new"``)."""

    def __init__(self, folder: Path) -> None:
        self.run: Any = None

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        import wandb

        project = None if os.environ.get("WANDB_PROJECT") else "transferbench"  # None: W&B reads the variable
        # WANDB_DIR read now: W&B reads its variables once per process, at the first run
        self.run = wandb.init(project=project, dir=os.environ.get("WANDB_DIR") or None, name=run_name,
                              config=dict(config), reinit="create_new")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, summary: Mapping[str, float], failed: bool = False) -> None:
        self.run.summary.update(dict(summary))
        self.run.finish(exit_code=1 if failed else 0)


class TensorBoardTracker:
    """TensorBoard event files, one folder per run (``tensorboard --logdir <folder>/tensorboard``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder) / "tensorboard"
        self.writer: Any = None
        self.last_step = 0

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from .names import check_component, inside

        # run keys and checkpoint names are checked where they are made; this keeps the event files in the folder
        log_dir = inside(self.folder.parent, self.folder / check_component(run_name, "tracker run name"))
        self.writer = SummaryWriter(log_dir=str(log_dir))
        # a fenced block: TensorBoard's text tab renders markdown
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.last_step = max(self.last_step, step)

    def finish(self, summary: Mapping[str, float], failed: bool = False) -> None:
        for name, value in summary.items():
            self.writer.add_scalar(f"final/{name}", value, self.last_step)
        if failed:
            self.writer.add_text("status", "failed")
        self.writer.close()


class MlflowTracker:
    """MLflow through its client (no module-level active run, so runs of one process never mix)."""

    def __init__(self, folder: Path) -> None:
        self.client: Any = None
        self.run_id = ""
        self.last_step = 0

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()  # $MLFLOW_TRACKING_URI, else MLflow's default store
        experiment = _mlflow_experiment(self.client, os.environ.get("MLFLOW_EXPERIMENT_NAME") or "transferbench")
        self.run_id = self.client.create_run(experiment, run_name=run_name).info.run_id
        params = [Param(key, str(value)[:MLFLOW_PARAM_CHARS]) for key, value in flatten(config).items()]
        for start in range(0, len(params), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + MLFLOW_BATCH])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        self.last_step = max(self.last_step, step)

    def finish(self, summary: Mapping[str, float], failed: bool = False) -> None:
        if summary:
            self.log(self.last_step, summary)
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def _mlflow_experiment(client: Any, name: str) -> str:
    """The experiment's id, created on first use (a concurrent job may create it first: then it is read)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        return client.get_experiment_by_name(name).experiment_id


@dataclass(frozen=True)
class Backend:
    tracker: type  # a class of the Tracker protocol, built with the run's local folder
    module: str  # the package it imports (looked for before any work)
    extra: str  # the pip extra that installs it


BACKENDS: dict[str, Backend] = {
    "wandb": Backend(WandbTracker, "wandb", "wandb"),
    "tensorboard": Backend(TensorBoardTracker, "tensorboard", "tensorboard"),
    "mlflow": Backend(MlflowTracker, "mlflow", "mlflow"),
}


def tracker_names(value: str) -> list[str]:
    """``--log``'s value: one name or several, comma-separated (an argparse ``type``: unknown names are refused
    while the flags are read)."""
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(BACKENDS)} (several: comma-separated "
                                         "or --log repeated)")
    return names


def add_log_flag(parser: argparse.ArgumentParser, what: str = "this run") -> None:
    """``--log NAME[,NAME]`` (repeatable) into ``args.trackers``."""
    parser.add_argument("--log", dest="trackers", type=tracker_names, action="extend", default=[],
                        metavar="TRACKER",
                        help=f"report {what}'s per-epoch curve and final metrics to {', '.join(BACKENDS)} "
                             "(comma-separated or repeated; pip install 'transferbench[NAME]'; see README)")


def require_trackers(names: Iterable[str]) -> tuple[str, ...]:
    """The trackers asked for, in order and once each; a backend that is not installed is a one-line error naming
    its pip extra (called before any work)."""
    names = tuple(dict.fromkeys(names))
    for name in names:
        backend = BACKENDS.get(name)
        if backend is None:
            raise TransferbenchError(f"--log {name}: not a tracker; choose from {', '.join(BACKENDS)}")
        if importlib.util.find_spec(backend.module) is None:
            raise TransferbenchError(f"--log {name}: the {backend.module} package is not installed; "
                                     f"pip install 'transferbench[{backend.extra}]'")
    return names


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``a.b`` keys (MLflow's parameters are flat)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` (numpy scalars included; booleans, strings and None left out), as
    floats."""
    return {k: float(v) for k, v in values.items() if isinstance(v, Real) and not isinstance(v, bool)}


class Tracking:
    """The trackers of one run; with no names every call does nothing (runs without ``--log`` pay nothing).

    Used as a context manager: ``start`` opens a run in every backend, ``log_point`` reports a curve point,
    ``summary`` collects the final metrics, and leaving the block finishes every backend's run (failed when the
    block raised). A block that never called ``start`` (e.g. a run found done) leaves no trace in any tracker. A
    backend that fails (no network, no credentials) is a warning and is dropped; the run goes on.
    """

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names = require_trackers(names)
        self.trackers: list[tuple[str, Tracker]] = []  # those started and still working
        self.summary: dict[str, float] = {}
        self.steps = 0

    def start(self, run_name: str, config: Mapping[str, Any], folder: str | Path) -> None:
        for name in self.names:
            tracker = BACKENDS[name].tracker(Path(folder))
            if self._guarded(name, "could not start", tracker.start, run_name, config):
                self.trackers.append((name, tracker))
        if self.trackers:
            log.info("run %s: logging to %s", run_name, ", ".join(name for name, _ in self.trackers))

    def log_point(self, point: Mapping[str, Any]) -> None:
        """A curve point: its ``epoch`` is the step (else the points counted so far), its numbers the metrics."""
        step = int(point["epoch"]) if "epoch" in point else self.steps
        self.steps = step + 1
        metrics = numeric({k: v for k, v in point.items() if k != "epoch"})
        self.trackers = [(name, tracker) for name, tracker in self.trackers
                         if self._guarded(name, "stopped logging", tracker.log, step, metrics)]

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        summary = numeric(self.summary)
        for name, tracker in self.trackers:
            self._guarded(name, "could not finish", tracker.finish, summary, failed=error is not None)
        self.trackers = []

    @staticmethod
    def _guarded(name: str, what: str, call: Any, *args: Any, **kwargs: Any) -> bool:
        """``call`` done; a tracker's failure (no network, no credentials, a full disk) is a warning, never the
        run's failure: trackers only watch, and a run's record is what counts."""
        try:
            call(*args, **kwargs)
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            log.warning("--log %s %s: %s: %s; the run goes on without it", name, what, type(exc).__name__,
                        first_line)
            return False
        return True


def track(names: Sequence[str], run_name: str, config: Mapping[str, Any], folder: str | Path) -> Tracking:
    """A started ``Tracking`` (a no-op one without names), to be used as ``with track(...) as tracking:``."""
    tracking = Tracking(names)
    if tracking.names:
        tracking.start(run_name, config, folder)
    return tracking


def log_curve(names: Sequence[str], run_name: str, config: Mapping[str, Any], folder: str | Path,
              curve: Iterable[Mapping[str, Any]], summary: Mapping[str, Any]) -> None:
    """A finished run's whole curve and final metrics at once (the linear probes, trained in seconds and several
    seeds together)."""
    if not names:
        return
    with track(names, run_name, config, folder) as tracking:
        for point in curve:
            tracking.log_point(point)
        tracking.summary.update(summary)


def spec_config(spec: Any) -> dict[str, Any]:
    """What a tracker shows as a transfer run's config: its run key and everything the key is made of
    (``RunSpec.key_material``: task, mode, seed, checkpoint, hyper-parameters)."""
    return {"run_key": spec.run_key, **spec.key_material()}
