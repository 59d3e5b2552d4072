"""RunSpec: a frozen, hashable description of one transfer run, and its run key.

Everything that can change a run's numbers is in the spec (and so in its key); things that cannot
(paths, worker counts, progress bars) live in RunContext.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from .bounds import SEED, Bounds, check_fields
from .errors import TransferbenchError
from .store.layout import record_dir, work_dir
from .store.record import SCHEMA_VERSION
from .tasks import TaskSpec, get_task
from .tasks.subset import LOW_DATA_PRESETS

# The paper's protocol (transfer_protocol.md §3-4). The LR is multiplied by lr_gamma *after* the listed
# 0-based epoch indices (50 and 100 → 51/50/49 epochs at LR, LR/10, LR/100; pitfall P4).
PAPER_EPOCHS = 150
PAPER_DECAY_AFTER = (50, 100)


SOLVERS = ("sgd", "lbfgs")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
INTERPOLATIONS = ("bilinear", "bicubic")
LOADERS = ("torchvision", "ffcv")
ENGINES = ("torch", "deepsparse", "semi-structured")


def _hparam(default: Any, help: str, bounds: Bounds, *, flag: bool = False) -> Any:
    """A hyper-parameter field and its schema: what it admits (``bounds``, checked by ``HParams.__post_init__``
    whichever way it is set). Every field can be set with ``--set NAME=VALUE``; ``flag`` also gives it a
    ``transferbench run --name`` flag (generated from this metadata), with ``help`` and the choices of ``bounds``
    (the empty text of ``interpolation``, "the architecture's", is its default, not a choice to type)."""
    choices = tuple(c for c in bounds.choices if c) or None
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "bounds": bounds})


_COUNT = Bounds(int, low=1)
_POSITIVE = Bounds(float, low=0, low_open=True)
_NON_NEGATIVE = Bounds(float, low=0)


@dataclass(frozen=True)
class HParams:
    epochs: int = _hparam(PAPER_EPOCHS, "override the protocol's 150 epochs", _COUNT, flag=True)
    batch_size: int = _hparam(64, "override the protocol's batch size of 64", _COUNT, flag=True)
    lr: float = _hparam(0.01, "override the protocol's learning rate", _POSITIVE, flag=True)
    momentum: float = _hparam(0.9, "override the protocol's momentum 0.9", _NON_NEGATIVE, flag=True)
    # on every parameter, BN and biases included (pitfall P5)
    weight_decay: float = _hparam(5e-4, "override the protocol's weight decay 5e-4", _NON_NEGATIVE, flag=True)
    lr_decay_after: tuple[int, ...] = _hparam(
        PAPER_DECAY_AFTER, "0-based epochs after which the LR is multiplied by lr_gamma (default 50 and 100, kept "
        "in proportion when only the epochs change)", Bounds(tuple, item=Bounds(int, low=0)))
    lr_gamma: float = _hparam(0.1, "the LR's factor at each decay point (default 0.1)", _POSITIVE)
    solver: str = _hparam("sgd", "linear head solver (default sgd, the paper's)", Bounds(str, choices=SOLVERS),
                          flag=True)  # lbfgs: Kornblith et al.
    lbfgs_c_grid: tuple[float, ...] = _hparam(tuple(10.0**k for k in range(-6, 6)),
                                              "inverse L2 strengths --solver lbfgs chooses from (1e-6 ... 1e5)",
                                              Bounds(tuple, item=_POSITIVE, min_items=1))
    lbfgs_holdout: float = _hparam(0.2, "share of train held out to choose C (--solver lbfgs)",
                                   Bounds(float, low=0, high=1, low_open=True, high_open=True))
    lbfgs_max_iter: int = _hparam(1000, "L-BFGS iterations per fit (--solver lbfgs)", _COUNT)
    image_size: int = _hparam(224, "input resolution (default: the protocol's 224 px; a timm model trained at "
                              "another its own, e.g. 384; a mini-task its native size)", _COUNT, flag=True)
    # "" = the architecture's (bicubic for RigL, pitfall P9)
    interpolation: str = _hparam("", "override the architecture's resize interpolation",
                                 Bounds(str, choices=("", *INTERPOLATIONS)), flag=True)
    eval_every: int = _hparam(1, "evaluate on the test split every N epochs (default 1)", _COUNT)
    precision: str = _hparam("fp32", "fp32 (the paper's, default: true fp32, TF32 off on GPUs), tf32 (TensorFloat-32 "
                             "convolutions and matmuls, CUDA GPUs from Ampere on), bf16 autocast (faster; not the "
                             "protocol) or fp16 autocast with loss scaling (GPUs without bfloat16: V100, T4)",
                             Bounds(str, choices=PRECISIONS), flag=True)
    # Fast paths that change numbers within float/JPEG tolerance, so they are part of the run (see key_material):
    loader: str = _hparam("torchvision", "image pipeline: torchvision (default) or ffcv (.beton files from "
                          "`transferbench data convert`; pip install transferbench[ffcv])",
                          Bounds(str, choices=LOADERS), flag=True)
    engine: str = _hparam("torch", "linear feature extraction: torch (default), deepsparse (sparsity-aware CPU "
                          "runtime in its own environment) or semi-structured (2:4 sparse Linear layers on NVIDIA "
                          "GPUs of compute capability 8.0+, fp16/bf16); see docs/fast_paths.md",
                          Bounds(str, choices=ENGINES), flag=True)
    # Quick tries (lm-eval's --limit): a subset of both splits, so a limited run is never a full one (see key_material)
    limit: int = _hparam(0, "quick try: the first N images of each split (train and test), taken class by class in "
                         "turn; 0 = the whole splits (default). Part of the run key (-limitN); such runs are left out "
                         "of the comparison with the paper", Bounds(int, low=0), flag=True)
    # The low-data regime (tasks.subset): part of the run key (-nN, -kK); the run's seed draws the images
    train_size: int = _hparam(0, "low-data regime: train on a seeded, class-balanced subset of N images of the "
                              "training split (the run's seed draws it; the test split stays whole); vtab1k = 1000 "
                              "(VTAB-1k); 0 = the whole split (default)", Bounds(int, low=0), flag=True)
    train_per_class: int = _hparam(0, "low-data regime: K seeded images of every class of the training split (0 = "
                                   "the whole split, default)", Bounds(int, low=0), flag=True)
    validation_size: int = _hparam(0, "hold out N of the --train-size images (class-balanced) as a validation split "
                                   "for choosing hyper-parameters, its accuracy recorded beside the test split's "
                                   "(vtab1k: 200 of 1000); linear probes with the sgd solver", Bounds(int, low=0),
                                   flag=True)

    def __post_init__(self) -> None:
        """Every field checked against its schema (``_hparam``'s bounds) and coerced (``2.0`` epochs is 2, text
        numbers are numbers, lists are tuples), then the rules between fields that the bounds cannot state."""
        check_fields(self, hparam_source)
        decay = self.lr_decay_after
        # epochs 0 .. epochs-1 are the run (a point at the last one is allowed and changes nothing); later is a typo
        if any(d >= self.epochs for d in decay) or list(decay) != sorted(decay):
            raise TransferbenchError(
                f"bad value {list(decay)} for {hparam_source('lr_decay_after')}: decay points are 0-based epochs "
                f"of the run in increasing order, each below epochs ({self.epochs})")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # flat: asdict's deep copies cost ~80 µs

    def key_dict(self) -> dict[str, Any]:
        """``to_dict`` without fields that are at a default added after schema 1, so old run keys stay valid."""
        values = self.to_dict()
        for name, default in _LATER_FIELDS.items():
            if values[name] == default:
                del values[name]
        return values


# what a probe's features (and so an estimate) depend on: the hyper-parameters `transferbench estimate` takes
FEATURE_HPARAMS = ("image_size", "interpolation", "precision", "loader", "engine", "limit", "train_size",
                   "train_per_class")
_LATER_FIELDS = {"loader": "torchvision", "engine": "torch", "limit": 0, "train_size": 0, "train_per_class": 0,
                 "validation_size": 0}
HPARAM_FIELDS = {f.name: f for f in fields(HParams)}


def hparam_source(name: str) -> str:
    """A hyper-parameter as errors name it: its `run` flag if it has one, and ``--set`` (a sweep file's error adds
    the file and its ``overrides``)."""
    flag = f"--{name.replace('_', '-')} or " if HPARAM_FIELDS[name].metadata["flag"] else ""
    return f"hyper-parameter {name} ({flag}--set {name}=...)"


def resolve_hparams(mode: str, task_full_lr: float, overrides: dict[str, Any] | None = None) -> HParams:
    """Paper defaults for ``mode``, then user overrides, each checked against its field's schema (``_hparam``).

    When only ``epochs`` is overridden, the decay points keep their relative position (50/150, 100/150), so a
    shortened run still sees the three LR phases.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(HPARAM_FIELDS))
    if unknown:
        raise TransferbenchError(
            f"unknown hyper-parameter {', '.join(unknown)} (--set); known: {', '.join(sorted(HPARAM_FIELDS))}"
        )
    size = overrides.get("train_size")
    if isinstance(size, str) and size in LOW_DATA_PRESETS:
        preset = LOW_DATA_PRESETS[overrides.pop("train_size")]  # vtab1k: 1000 images, 200 of them held out
        overrides = {**preset, **overrides}
    elif isinstance(size, str) and not size.strip().isdigit():
        raise TransferbenchError(f"bad value {size!r} for {hparam_source('train_size')}: a whole number of "
                                 f"training images, or a preset: {', '.join(LOW_DATA_PRESETS)}")
    overrides = {key: _coerce(key, value) for key, value in overrides.items()}
    if "epochs" in overrides and "lr_decay_after" not in overrides:
        # keep the paper's three phases in proportion: 51/50/49 of 150 epochs
        e = overrides["epochs"]
        overrides["lr_decay_after"] = tuple(max(0, round((d + 1) * e / PAPER_EPOCHS) - 1) for d in PAPER_DECAY_AFTER)
    hp = HParams(**{"lr": task_full_lr if mode == "full" else 0.01, **overrides})  # checked in __post_init__
    if hp.solver == "lbfgs" and mode != "linear":
        raise TransferbenchError("--solver lbfgs applies to --mode linear only")
    if hp.engine != "torch" and mode in ("full", "evaluate"):
        raise TransferbenchError(f"--engine {hp.engine} extracts frozen features: it applies to --mode linear and "
                                 "estimate only")
    if mode == "evaluate" and (hp.loader != "torchvision" or hp.train_size or hp.train_per_class
                               or hp.validation_size):
        raise TransferbenchError("--mode evaluate trains nothing: drop --loader, --train-size, --train-per-class and "
                                 "--validation-size")
    if hp.engine == "deepsparse" and hp.precision != "fp32":
        raise TransferbenchError(f"--engine deepsparse runs in fp32: drop --precision {hp.precision}")
    if hp.engine == "semi-structured" and hp.precision not in ("bf16", "fp16"):  # 2:4 kernels: half precision only
        raise TransferbenchError(f"--engine semi-structured runs in fp16 or bf16: pass --precision bf16 (not "
                                 f"{hp.precision})")
    if hp.engine == "deepsparse" and hp.loader == "ffcv":  # the DeepSparse worker reads a torch DataLoader
        raise TransferbenchError("--engine deepsparse reads images with torchvision: drop --loader ffcv")
    if hp.limit and hp.loader == "ffcv":  # a .beton holds the whole split; a subset would need its own files
        raise TransferbenchError("--limit reads a subset of each split with torchvision: drop --loader ffcv")
    if (hp.train_size or hp.train_per_class) and hp.loader == "ffcv":
        raise TransferbenchError("--train-size/--train-per-class read a subset of the training split with "
                                 "torchvision: drop --loader ffcv")
    if hp.train_size and hp.train_per_class:
        raise TransferbenchError("--train-size and --train-per-class choose the training subset two ways: give one")
    if hp.validation_size and not 0 < hp.validation_size < hp.train_size:
        raise TransferbenchError(f"--validation-size {hp.validation_size} holds out part of the --train-size images: "
                                 f"give --train-size above it (now {hp.train_size})")
    if hp.validation_size and (mode == "full" or hp.solver != "sgd"):
        raise TransferbenchError("--validation-size applies to linear probes with the sgd solver and to estimates "
                                 "(--solver lbfgs holds out its own lbfgs_holdout); drop it")
    return hp


def _coerce(key: str, value: Any) -> Any:
    """An override as its field's schema admits it (YAML reads ``1e-3`` as a string), or a one-line error."""
    return HPARAM_FIELDS[key].metadata["bounds"].check(value, hparam_source(key))


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", SEED.check(self.seed, "--seed"))  # numpy's and scikit-learn's range

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
            **self._backdoor_material(),
        }

    def _backdoor_material(self) -> dict[str, Any]:
        """A backdoor variant's cue settings (the card's fractions, seed and square size: which images carry which
        cue); other tasks add nothing, so their keys stay as they were."""
        try:
            task = get_task(self.task)
        except TransferbenchError:  # a task no card names (any more): nothing to add
            return {}
        return {"backdoors": task.extra.get("backdoors")} if task.extra.get("backdoor") else {}

    @property
    def extraction_key(self) -> tuple:
        """What a linear probe's features depend on: specs with equal keys share one feature extraction (the
        runner's group and the sweep planner's work unit)."""
        hp = self.hparams
        subset = ((hp.train_size, hp.train_per_class, hp.validation_size, self.seed)
                  if hp.train_size or hp.train_per_class else None)
        return (self.task, self.mode, self.checkpoint, hp.image_size, hp.interpolation, hp.precision, hp.loader,
                hp.engine, hp.limit, subset)  # a low-data subset is the seed's own: its own features

    @cached_property  # frozen: computed once (a sweep asks for 100k keys several times)
    def run_key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.key_material(), sort_keys=True).encode()).hexdigest()[:12]
        ck = self.checkpoint
        sparsity = f"{round(ck.sparsity * 100, 2):g}"
        solver = "-lbfgs" if self.hparams.solver == "lbfgs" else ""
        limit = f"-limit{self.hparams.limit}" if self.hparams.limit else ""  # a quick try, visible in every listing
        size = f"-n{self.hparams.train_size}" if self.hparams.train_size else ""  # the low-data regime, visible too
        size += f"-k{self.hparams.train_per_class}" if self.hparams.train_per_class else ""
        size += f"-v{self.hparams.validation_size}" if self.hparams.validation_size else ""
        return (f"{self.task}.{ck.method}{sparsity}.{ck.arch}.{self.mode}{solver}{limit}{size}.s{self.seed}."
                f"{digest}")

    def record_dir(self, results: str | Path) -> Path:
        return record_dir(results, self.run_key)

    def work_dir(self, results: str | Path) -> Path:
        return work_dir(results, self.run_key)


# estimate: the transferability estimators on the linear probe's features (no training; runner._run_estimate);
# evaluate: the checkpoint's own head on the task's test (and validation) split, no training, for a model trained on
# the task itself (the bias study's CelebA models from scratch; runner._run_evaluate)
MODES = ("linear", "full", "estimate", "evaluate")


def make_spec(task: str, mode: str, seed: int, checkpoint: CheckpointRef,
              overrides: dict | None = None) -> RunSpec:
    """The RunSpec of one run: the task's card, the protocol's hyper-parameters for ``mode``, then ``overrides``."""
    task_spec = get_task(task)
    if mode not in MODES:
        raise TransferbenchError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    overrides = dict(overrides or {})
    if task_spec.image_size != 224:  # mini-tasks run at their native resolution unless overridden
        overrides.setdefault("image_size", task_spec.image_size)
    elif "image_size" not in overrides and checkpoint.arch:  # a timm model trained at another resolution: its own
        from .models import model_class  # (torch; this module stays importable without it)

        if (native := model_class(checkpoint.arch).input_size) != 224:
            overrides["image_size"] = native
    hp = resolve_hparams(mode, task_spec.full_lr, overrides)
    check_task_hparams(task_spec, mode, hp)
    return RunSpec(task=task_spec.name, mode=mode, seed=seed, checkpoint=checkpoint, hparams=hp)


def check_task_hparams(task: TaskSpec, mode: str, hp: HParams) -> None:
    """What a multi-label task (CelebA's attributes: one sigmoid output each) cannot run, as one line: the
    estimators, the L-BFGS solver and the class-balanced subsets are defined for one label per image, the task
    has its official validation split (no ``--validation-size``), and its validation split and image attributes
    are read through torchvision (no FFCV or DeepSparse)."""
    if not task.multilabel:
        return
    refused = [(mode == "estimate", "--mode estimate"), (hp.solver != "sgd", f"--solver {hp.solver}"),
               (bool(hp.train_size or hp.train_per_class), "--train-size/--train-per-class"),
               (bool(hp.validation_size), "--validation-size (the task has its official validation split)"),
               (hp.loader != "torchvision", f"--loader {hp.loader}"), (hp.engine != "torch", f"--engine {hp.engine}")]
    for bad, flag in refused:
        if bad:
            raise TransferbenchError(f"{flag} is not available for the multi-label task {task.name} (one sigmoid "
                                     "output per attribute): drop it")


def group_by_extraction(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """Linear probes grouped by extraction key (one feature extraction each); every full run alone. The sweep
    planner packs its jobs with this, so a job is exactly one group. An estimate reads the probes' cached features
    but is a group of its own (it trains nothing)."""
    groups: dict[tuple, list[RunSpec]] = {}
    for spec in specs:
        key = ("linear", spec.extraction_key) if spec.mode == "linear" else (spec.mode, spec.run_key)
        groups.setdefault(key, []).append(spec)
    return list(groups.values())
