"""RunRecord: the typed result of one run, and its only JSON writer (``to_json``) and reader (``from_json``).

Records store accuracies and sparsities as fractions and the checkpoint's registered ImageNet top-1 in percent
(as the registry keeps it). ``from_json`` refuses what cannot be a completed run (``RecordError``, whose message is
the reason a report shows). Records written before ``schema_version`` 1 (accuracies possibly in percent, metrics at
the top level) are first upgraded to the version-1 layout by ``upgrade_legacy``, the one place that knows them.

Every record says whether its run followed the paper's protocol exactly: ``"protocol": "paper"`` or the list of its
deviations (``["epochs=8", "precision=bf16"]``), computed by ``transferbench.protocol.protocol_deviations`` from
the record's task, mode and hyper-parameters when it is written; a record written before the field existed gets
the same answer on read, from its stored ``config["hparams"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .layout import PREDICTIONS_FILE

SCHEMA_VERSION = 1
PAPER_PROTOCOL = "paper"  # a record's ``protocol`` when its run followed the paper's protocol exactly
COMPLETED = "completed"
REQUIRED = ("task", "method", "arch", "mode", "seed", "target_sparsity", "primary")


class RecordError(ValueError):
    """A record that cannot be counted as a completed run; the message is the reason."""


@dataclass(frozen=True)
class CheckpointInfo:
    identity: str | None = None  # registry name@sha256:..., or sha256:<hex> for a file given by path
    path: str | None = None
    sha256: str | None = None
    format: str | None = None
    arch: str | None = None
    upstream_top1: float | None = None  # the registry's ImageNet top-1, in percent


@dataclass(frozen=True)
class SparsityInfo:
    upstream_measured: float | None = None  # over every Conv/Linear weight of the upstream model, head included
    backbone_before: float | None = None
    backbone_after: float | None = None
    per_layer: dict[str, float] = field(default_factory=dict)
    # Over the weights the checkpoint's method prunes (sparsity_rules.yaml): what its registered sparsity means.
    # Optional: records written before these existed have neither, and to_json leaves them out when None.
    prunable_set: str | None = None
    upstream_measured_prunable: float | None = None

    @property
    def measured(self) -> float | None:
        """The backbone's sparsity the run ended with (full fine-tuning keeps the mask; a probe leaves it)."""
        return self.backbone_after if self.backbone_after is not None else self.backbone_before


@dataclass(frozen=True)
class Metrics:
    top1: float = math.nan
    mean_per_class_acc: float = math.nan
    primary_metric: str | None = None  # the metric the paper reports for the task: top1 or mean_per_class_acc
    primary: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. full fine-tuning's best_epoch and best_top1


@dataclass(frozen=True)
class RunRecord:
    """Everything needed to read, compare and rerun one run. Written by the runner, read by status and collect."""

    run_key: str
    task: str
    method: str
    arch: str
    mode: str
    seed: int
    target_sparsity: float
    metrics: Metrics
    checkpoint: CheckpointInfo = field(default_factory=CheckpointInfo)
    sparsity: SparsityInfo = field(default_factory=SparsityInfo)
    config: dict[str, Any] = field(default_factory=dict)  # resolved hparams, transforms, data, device, ...
    curve: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None
    schema_version: int = SCHEMA_VERSION
    predictions: str = PREDICTIONS_FILE
    upstream_top1: float | None = None  # a fraction; only records older than schema 1 carried it here
    # the deviations from the paper's protocol as the record states them; None: derived from config (``deviations``)
    stated_protocol: tuple[str, ...] | None = field(default=None, compare=False)  # config decides equality
    # whether to_json writes ``protocol``: a record read without one is written back as it was (its layout kept)
    writes_protocol: bool = field(default=True, compare=False)

    @property
    def deviations(self) -> tuple[str, ...]:
        """How the run departs from the paper's protocol (``protocol.protocol_deviations``); () when it follows it."""
        if self.stated_protocol is not None:
            return self.stated_protocol
        from ..protocol import protocol_deviations  # here: the protocol module reads runspec, which imports the store

        hparams = self.config.get("hparams")
        return tuple(protocol_deviations(self.task, self.mode, hparams if isinstance(hparams, dict) else None))

    @property
    def protocol(self) -> str | list[str]:
        """``"paper"`` when the run followed the paper's protocol exactly, else the list of its deviations."""
        return list(self.deviations) or PAPER_PROTOCOL

    @property
    def solver(self) -> str | None:
        solver = self.config.get("hparams", {}).get("solver") if isinstance(self.config.get("hparams"), dict) else None
        return solver if isinstance(solver, str) and solver else None

    @property
    def precision_policy(self) -> dict[str, Any] | None:
        """The run's float arithmetic: device type, precision, TF32, autocast (``context.precision_policy``); None
        for records written before runs recorded it."""
        policy = self.config.get("precision_policy")
        return policy if isinstance(policy, dict) else None

    @property
    def deterministic(self) -> bool | None:
        """Whether the run picked deterministic algorithms (False: ``--cudnn-benchmark``); None when the record
        does not say."""
        state = self.config.get("determinism")
        value = state.get("deterministic_algorithms") if isinstance(state, dict) else None
        return value if isinstance(value, bool) else None

    @property
    def total_s(self) -> float:
        """The run's wall time in seconds (NaN when the record does not say)."""
        return _number(self.timings.get("total_s"))

    @property
    def upstream_fraction(self) -> float | None:
        """The upstream model's ImageNet top-1 as a fraction."""
        if self.upstream_top1 is not None:
            return self.upstream_top1
        return None if self.checkpoint.upstream_top1 is None else self.checkpoint.upstream_top1 / 100.0

    def to_json(self) -> dict[str, Any]:
        data = {
            "schema_version": self.schema_version, "run_key": self.run_key, "status": COMPLETED,
            "created_at": self.created_at, "task": self.task, "method": self.method, "arch": self.arch,
            "mode": self.mode, "seed": self.seed, "target_sparsity": self.target_sparsity,
            "predictions": self.predictions, "versions": self.versions,
            "checkpoint": {k: getattr(self.checkpoint, k) for k in CheckpointInfo.__dataclass_fields__},
            "sparsity": {k: getattr(self.sparsity, k) for k in SparsityInfo.__dataclass_fields__
                         if k not in _OPTIONAL_SPARSITY or getattr(self.sparsity, k) is not None},
            "config": self.config,
            "metrics": {"top1": self.metrics.top1, "mean_per_class_acc": self.metrics.mean_per_class_acc,
                        "primary_metric": self.metrics.primary_metric, "primary": self.metrics.primary,
                        **self.metrics.extra},
            "curve": self.curve, "timings": self.timings, "hardware": self.hardware,
        }
        if self.writes_protocol:
            data["protocol"] = self.protocol
        if self.upstream_top1 is not None:
            data["upstream_top1"] = self.upstream_top1
        return data

    @classmethod
    def from_json(cls, data: Any, default_run_key: str = "") -> RunRecord:
        """The record in ``data`` (parsed JSON); raises RecordError when it is not a completed run."""
        if not isinstance(data, dict):
            raise RecordError(f"not a JSON object but {type(data).__name__}")
        status = data.get("status")
        if status != COMPLETED:
            raise RecordError("missing fields: status" if status is None else f"status {status!r}")
        version = _integer(data.get("schema_version"))
        if version is None or version < 1:
            data = upgrade_legacy(data)
        else:
            _check_units(data, version)
        return _build(data, version, default_run_key)


_METRIC_KEYS = ("top1", "mean_per_class_acc", "primary_metric", "primary")
_OPTIONAL_SPARSITY = ("prunable_set", "upstream_measured_prunable")  # written only when known


def _build(data: dict, version: int | None, default_run_key: str) -> RunRecord:
    metrics = _dict(data.get("metrics"))
    ckpt, sparsity = _dict(data.get("checkpoint")), _dict(data.get("sparsity"))
    primary_metric = _text(metrics.get("primary_metric")) or _primary_metric_of_task(_text(data.get("task")))
    top1, mpc = _number(metrics.get("top1")), _number(metrics.get("mean_per_class_acc"))
    primary = _number(metrics.get("primary"))
    if math.isnan(primary):
        primary = {"top1": top1, "mean_per_class_acc": mpc}.get(primary_metric or "", math.nan)
    target = _number(data.get("target_sparsity"))
    if math.isnan(target) and data.get("method") == "dense":
        target = 0.0
    fields_ = {"task": _text(data.get("task")), "method": _text(data.get("method")), "arch": _text(data.get("arch")),
               "mode": _text(data.get("mode")), "seed": _integer(data.get("seed")),
               "target_sparsity": _optional(target), "primary": _optional(primary)}
    missing = [k for k in REQUIRED if fields_[k] is None]
    if missing:
        raise RecordError(f"missing fields: {', '.join(missing)}")
    upstream = _number(data.get("upstream_top1"))
    return RunRecord(
        run_key=_text(data.get("run_key")) or default_run_key, task=fields_["task"], method=fields_["method"],
        arch=fields_["arch"], mode=fields_["mode"], seed=fields_["seed"], target_sparsity=target,
        metrics=Metrics(top1, mpc, primary_metric, primary,
                        {k: v for k, v in metrics.items() if k not in _METRIC_KEYS}),
        checkpoint=CheckpointInfo(
            identity=_text(ckpt.get("identity")), path=_text(ckpt.get("path")), sha256=_text(ckpt.get("sha256")),
            format=_text(ckpt.get("format")), arch=_text(ckpt.get("arch")),
            upstream_top1=_optional(_number(ckpt.get("upstream_top1")))),
        sparsity=SparsityInfo(_optional(_number(sparsity.get("upstream_measured"))),
                              _optional(_number(sparsity.get("backbone_before"))),
                              _optional(_number(sparsity.get("backbone_after"))),
                              _dict(sparsity.get("per_layer")), _text(sparsity.get("prunable_set")),
                              _optional(_number(sparsity.get("upstream_measured_prunable")))),
        config=_dict(data.get("config")), curve=data.get("curve") if isinstance(data.get("curve"), list) else [],
        timings=_dict(data.get("timings")), hardware=_dict(data.get("hardware")),
        versions={str(k): str(v) for k, v in _dict(data.get("versions")).items()},
        created_at=_text(data.get("created_at")), schema_version=version if version is not None else 0,
        predictions=_text(data.get("predictions")) or PREDICTIONS_FILE, upstream_top1=_optional(upstream),
        stated_protocol=_stated_protocol(data.get("protocol")), writes_protocol="protocol" in data,
    )


def _stated_protocol(value: Any) -> tuple[str, ...] | None:
    """A record's ``protocol`` field: () for "paper", the deviations for a list of texts, None when absent or
    unreadable (then the record's config decides)."""
    if value == PAPER_PROTOCOL:
        return ()
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    return None


def _check_units(data: dict, version: int) -> None:
    """Version-1 records store fractions (accuracies, sparsities) and the registry's top-1 in percent."""
    metrics, sparsity = _dict(data.get("metrics")), _dict(data.get("sparsity"))
    groups = (("accuracies", {k: metrics.get(k) for k in ("top1", "mean_per_class_acc", "primary")}),
              ("sparsities", {"target_sparsity": data.get("target_sparsity"),
                              "measured_sparsity": _first(sparsity.get("backbone_after"),
                                                          sparsity.get("backbone_before"))}))
    for what, values in groups:
        for name, value in values.items():
            v = _number(value)
            if not math.isnan(v) and not 0.0 <= v <= 1.0:
                raise RecordError(f"bad value: {name} {v:g} is not a fraction, as schema_version {version} records "
                                  f"store {what}")
    upstream = _number(data.get("upstream_top1"))
    if not (math.isnan(upstream) or 0.0 <= upstream <= 1.0):
        raise RecordError(f"bad value: upstream_top1 {upstream:g} is not a fraction, as schema_version {version} "
                          "records store it")
    registry_top1 = _number(_dict(data.get("checkpoint")).get("upstream_top1"))
    if not (math.isnan(registry_top1) or 0.0 <= registry_top1 <= 100.0):
        raise RecordError(f"bad value: checkpoint upstream_top1 {registry_top1:g} is not a percentage, as "
                          f"schema_version {version} records store it")


def upgrade_legacy(data: dict) -> dict:
    """A record older than schema 1 in the version-1 layout. Such records kept metrics at the top level or under
    ``metrics``, ``sparsity`` as a number or a block, and wrote accuracies (and sparsities) in percent when any of
    them exceeds 1: the unit is decided per record, never per value."""
    metrics, ckpt = _dict(data.get("metrics")), _dict(data.get("checkpoint"))

    def metric(name: str) -> Any:
        return _first(metrics.get(name), data.get(name))

    accuracies = {"top1": _number(metric("top1")),
                  "mean_per_class_acc": _number(_first(metric("mean_per_class_acc"), metric("mean_per_class"))),
                  "primary": _number(metric("primary"))}
    sparsity = data.get("sparsity")
    measured = _first(sparsity.get("backbone_after"), sparsity.get("backbone_before")) \
        if isinstance(sparsity, dict) else sparsity
    sparsities = {"target_sparsity": _number(_first(data.get("target_sparsity"), ckpt.get("sparsity"))),
                  "measured": _number(measured)}
    accuracies, sparsities = _percent_to_fraction(accuracies), _percent_to_fraction(sparsities)
    upstream = _number(_first(data.get("upstream_top1"), metrics.get("upstream_top1"),
                              _dict(data.get("upstream")).get("top1")))
    if upstream > 1.0:  # one number: nothing else to judge its unit by
        upstream /= 100.0
    registry_top1 = _number(ckpt.get("upstream_top1"))
    if registry_top1 <= 1.0:  # an older record may hold a fraction where version 1 keeps the registry's percent
        upstream = registry_top1 if math.isnan(upstream) else upstream
        registry_top1 = math.nan
    return {
        **data,
        "method": _first(data.get("method"), ckpt.get("method")), "arch": _first(data.get("arch"), ckpt.get("arch")),
        "target_sparsity": _optional(sparsities["target_sparsity"]), "upstream_top1": _optional(upstream),
        "metrics": {**{k: v for k, v in metrics.items() if k != "mean_per_class"},
                    **{k: _optional(v) for k, v in accuracies.items()},
                    "primary_metric": metric("primary_metric")},
        "sparsity": {**(sparsity if isinstance(sparsity, dict) else {}), "backbone_after": None,
                     "backbone_before": _optional(sparsities["measured"])},
        "checkpoint": {**ckpt, "identity": _first(ckpt.get("identity"), ckpt.get("name"), ckpt.get("path")),
                       "upstream_top1": _optional(registry_top1)},
    }


def _percent_to_fraction(values: dict[str, float]) -> dict[str, float]:
    if any(v > 1.0 for v in values.values() if not math.isnan(v)):
        return {k: v / 100.0 for k, v in values.items()}
    return values


def _primary_metric_of_task(task: str | None) -> str | None:
    """The task card's metric, for records that do not name theirs."""
    if task is None:
        return None
    try:
        from ..tasks import get_task  # here, not at the top: the task registry loads torch, the store must not

        return get_task(task).metric
    except Exception:  # an unknown task (or a broken card) just leaves the metric unknown
        return None


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _number(x: Any) -> float:
    if isinstance(x, bool) or x is None:
        return math.nan
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _optional(v: float) -> float | None:
    return None if math.isnan(v) else v


def _integer(x: Any) -> int | None:
    v = _number(x)
    return int(v) if not math.isnan(v) and v == int(v) else None


def _text(x: Any) -> str | None:
    return x if isinstance(x, str) and x else None
