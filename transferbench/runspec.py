"""RunSpec: a frozen, hashable description of one transfer run, and its run key.

Everything that can change a run's numbers is in the spec (and so in its key); things that cannot
(paths, worker counts, progress bars) live in RunContext.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import TransferbenchError
from .store.layout import record_dir, work_dir
from .store.record import SCHEMA_VERSION
from .tasks import get_task

# The paper's protocol (transfer_protocol.md §3-4). The LR is multiplied by lr_gamma *after* the listed
# 0-based epoch indices (50 and 100 → 51/50/49 epochs at LR, LR/10, LR/100; pitfall P4).
PAPER_EPOCHS = 150
PAPER_DECAY_AFTER = (50, 100)


SOLVERS = ("sgd", "lbfgs")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
INTERPOLATIONS = ("bilinear", "bicubic")
LOADERS = ("torchvision", "ffcv")
ENGINES = ("torch", "deepsparse")


def _hparam(default: Any, help: str, *, flag: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """A hyper-parameter field. Every field can be set with ``--set NAME=VALUE``; ``flag`` also gives it a
    ``transferbench run --name`` flag (generated from this metadata), with ``help`` and ``choices``."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


@dataclass(frozen=True)
class HParams:
    epochs: int = _hparam(PAPER_EPOCHS, "override the protocol's 150 epochs", flag=True)
    batch_size: int = _hparam(64, "override the protocol's batch size of 64", flag=True)
    lr: float = _hparam(0.01, "override the protocol's learning rate", flag=True)
    momentum: float = _hparam(0.9, "override the protocol's momentum 0.9", flag=True)
    # on every parameter, BN and biases included (pitfall P5)
    weight_decay: float = _hparam(5e-4, "override the protocol's weight decay 5e-4", flag=True)
    lr_decay_after: tuple[int, ...] = _hparam(
        PAPER_DECAY_AFTER, "0-based epochs after which the LR is multiplied by lr_gamma (default 50 and 100, kept "
        "in proportion when only the epochs change)")
    lr_gamma: float = _hparam(0.1, "the LR's factor at each decay point (default 0.1)")
    solver: str = _hparam("sgd", "linear head solver (default sgd, the paper's)", flag=True,
                          choices=SOLVERS)  # lbfgs: Kornblith et al.
    lbfgs_c_grid: tuple[float, ...] = _hparam(tuple(10.0**k for k in range(-6, 6)),
                                              "inverse L2 strengths --solver lbfgs chooses from (1e-6 ... 1e5)")
    lbfgs_holdout: float = _hparam(0.2, "share of train held out to choose C (--solver lbfgs)")
    lbfgs_max_iter: int = _hparam(1000, "L-BFGS iterations per fit (--solver lbfgs)")
    image_size: int = _hparam(224, "override the 224 px input (tests and demos only)", flag=True)
    interpolation: str = _hparam("", "override the architecture's resize interpolation", flag=True,
                                 choices=INTERPOLATIONS)  # "" = the architecture's (bicubic for RigL, pitfall P9)
    eval_every: int = _hparam(1, "evaluate on the test split every N epochs (default 1)")
    precision: str = _hparam("fp32", "fp32 (the paper's, default: true fp32, TF32 off on GPUs), tf32 (TensorFloat-32 "
                             "convolutions and matmuls, CUDA GPUs from Ampere on), bf16 autocast (faster; not the "
                             "protocol) or fp16 autocast with loss scaling (GPUs without bfloat16: V100, T4)",
                             flag=True, choices=PRECISIONS)
    # Fast paths that change numbers within float/JPEG tolerance, so they are part of the run (see key_material):
    loader: str = _hparam("torchvision", "image pipeline: torchvision (default) or ffcv (.beton files from "
                          "`transferbench data convert`; pip install transferbench[ffcv])", flag=True, choices=LOADERS)
    engine: str = _hparam("torch", "linear feature extraction: torch (default) or deepsparse (sparsity-aware CPU "
                          "runtime in its own environment, see docs/fast_paths.md)", flag=True, choices=ENGINES)
    # Quick tries (lm-eval's --limit): a subset of both splits, so a limited run is never a full one (see key_material)
    limit: int = _hparam(0, "quick try: the first N images of each split (train and test), taken class by class in "
                         "turn; 0 = the whole splits (default). Part of the run key (-limitN); such runs are left out "
                         "of the comparison with the paper", flag=True)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # flat: asdict's deep copies cost ~80 µs

    def key_dict(self) -> dict[str, Any]:
        """``to_dict`` without fields that are at a default added after schema 1, so old run keys stay valid."""
        values = self.to_dict()
        for name, default in _LATER_FIELDS.items():
            if values[name] == default:
                del values[name]
        return values


_LATER_FIELDS = {"loader": "torchvision", "engine": "torch", "limit": 0}


def resolve_hparams(mode: str, task_full_lr: float, overrides: dict[str, Any] | None = None) -> HParams:
    """Paper defaults for ``mode``, then user overrides.

    When only ``epochs`` is overridden, the decay points keep their relative position (50/150, 100/150), so a
    shortened run still sees the three LR phases.
    """
    overrides = dict(overrides or {})
    names = {f.name for f in fields(HParams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TransferbenchError(
            f"unknown hyper-parameter {', '.join(unknown)} (--set); known: {', '.join(sorted(names))}"
        )
    base = HParams(lr=0.01 if mode == "linear" else task_full_lr)
    overrides = {key: _coerce(key, value, type(getattr(base, key))) for key, value in overrides.items()}
    if "epochs" in overrides and "lr_decay_after" not in overrides:
        # keep the paper's three phases in proportion: 51/50/49 of 150 epochs
        e = overrides["epochs"]
        overrides["lr_decay_after"] = tuple(max(0, round((d + 1) * e / PAPER_EPOCHS) - 1) for d in PAPER_DECAY_AFTER)
    hp = replace(base, **overrides)
    if hp.solver not in ("sgd", "lbfgs"):
        raise TransferbenchError(f"--solver must be sgd or lbfgs, not {hp.solver!r}")
    if hp.solver == "lbfgs" and mode != "linear":
        raise TransferbenchError("--solver lbfgs applies to --mode linear only")
    if hp.precision not in PRECISIONS:
        raise TransferbenchError(f"--precision must be one of {', '.join(PRECISIONS)}, not {hp.precision!r}")
    if hp.loader not in LOADERS:
        raise TransferbenchError(f"--loader must be one of {', '.join(LOADERS)}, not {hp.loader!r}")
    if hp.engine not in ENGINES:
        raise TransferbenchError(f"--engine must be one of {', '.join(ENGINES)}, not {hp.engine!r}")
    if hp.engine != "torch" and mode != "linear":
        raise TransferbenchError(f"--engine {hp.engine} extracts frozen features: it applies to --mode linear only")
    if hp.engine == "deepsparse" and hp.precision != "fp32":
        raise TransferbenchError(f"--engine deepsparse runs in fp32: drop --precision {hp.precision}")
    if hp.engine == "deepsparse" and hp.loader == "ffcv":  # the DeepSparse worker reads a torch DataLoader
        raise TransferbenchError("--engine deepsparse reads images with torchvision: drop --loader ffcv")
    if hp.interpolation not in ("", "bilinear", "bicubic"):
        raise TransferbenchError(f"--interpolation must be bilinear or bicubic, not {hp.interpolation!r}")
    if hp.limit < 0:
        raise TransferbenchError(f"--limit must be a number of images per split (0: all), not {hp.limit}")
    if hp.limit and hp.loader == "ffcv":  # a .beton holds the whole split; a subset would need its own files
        raise TransferbenchError("--limit reads a subset of each split with torchvision: drop --loader ffcv")
    if min(hp.epochs, hp.batch_size, hp.image_size, hp.eval_every) < 1 or hp.lr <= 0:
        raise TransferbenchError("--epochs, --batch-size, --image-size, eval_every and --lr must be positive")
    return hp


def _coerce(key: str, value: Any, kind: type) -> Any:
    """An override as its field's type (YAML reads ``1e-3`` as a string), or a one-line error."""
    try:
        if kind is tuple:
            items = value if isinstance(value, list | tuple) else str(value).strip("[]() ").split(",")
            return tuple(float(v) if key == "lbfgs_c_grid" else int(v) for v in items if str(v).strip())
        if kind is bool:
            return bool(value)
        return kind(value)
    except (TypeError, ValueError):
        raise TransferbenchError(f"bad value {value!r} for hyper-parameter {key} (--set {key}=...): "
                                 f"expected {kind.__name__}") from None


@dataclass(frozen=True)
class CheckpointRef:
    """Which upstream checkpoint a run uses: a registry entry or a local file identified by its sha256."""

    method: str
    sparsity: float  # the target (registered) sparsity, as a fraction
    arch: str
    identity: str  # registry name, or "sha256:<hex>" for --checkpoint PATH
    path: str = field(default="", compare=False)  # where it was found; not part of the identity


@dataclass(frozen=True)
class RunSpec:
    task: str
    mode: str  # "linear" | "full"
    seed: int
    checkpoint: CheckpointRef
    hparams: HParams

    def key_material(self) -> dict[str, Any]:
        ck = self.checkpoint
        return {
            "schema_version": SCHEMA_VERSION,
            "task": self.task,
            "mode": self.mode,
            "seed": self.seed,
            "checkpoint": {"identity": ck.identity, "method": ck.method, "sparsity": ck.sparsity,
                           "arch": ck.arch},
            "hparams": self.hparams.key_dict(),
        }

    @property
    def extraction_key(self) -> tuple:
        """What a linear probe's features depend on: specs with equal keys share one feature extraction (the
        runner's group and the sweep planner's work unit)."""
        hp = self.hparams
        return (self.task, self.mode, self.checkpoint, hp.image_size, hp.interpolation, hp.precision, hp.loader,
                hp.engine, hp.limit)

    @cached_property  # frozen: computed once (a sweep asks for 100k keys several times)
    def run_key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.key_material(), sort_keys=True).encode()).hexdigest()[:12]
        ck = self.checkpoint
        sparsity = f"{round(ck.sparsity * 100, 2):g}"
        solver = "-lbfgs" if self.hparams.solver == "lbfgs" else ""
        limit = f"-limit{self.hparams.limit}" if self.hparams.limit else ""  # a quick try, visible in every listing
        return f"{self.task}.{ck.method}{sparsity}.{ck.arch}.{self.mode}{solver}{limit}.s{self.seed}.{digest}"

    def record_dir(self, results: str | Path) -> Path:
        return record_dir(results, self.run_key)

    def work_dir(self, results: str | Path) -> Path:
        return work_dir(results, self.run_key)


MODES = ("linear", "full")


def make_spec(task: str, mode: str, seed: int, checkpoint: CheckpointRef,
              overrides: dict | None = None) -> RunSpec:
    """The RunSpec of one run: the task's card, the protocol's hyper-parameters for ``mode``, then ``overrides``."""
    task_spec = get_task(task)
    if mode not in MODES:
        raise TransferbenchError(f"--mode must be linear or full, not {mode!r}")
    overrides = dict(overrides or {})
    if task_spec.image_size != 224:  # mini-tasks run at their native resolution unless overridden
        overrides.setdefault("image_size", task_spec.image_size)
    hp = resolve_hparams(mode, task_spec.full_lr, overrides)
    return RunSpec(task=task_spec.name, mode=mode, seed=seed, checkpoint=checkpoint, hparams=hp)


def group_by_extraction(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """Linear probes grouped by extraction key (one feature extraction each); every full run alone. The sweep
    planner packs its jobs with this, so a job is exactly one group."""
    groups: dict[tuple, list[RunSpec]] = {}
    for spec in specs:
        key = ("linear", spec.extraction_key) if spec.mode == "linear" else ("full", spec.run_key)
        groups.setdefault(key, []).append(spec)
    return list(groups.values())
