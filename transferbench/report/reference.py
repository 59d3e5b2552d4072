"""The paper's published per-seed results as a reference table, in the same columns as our collected runs.

The files are the ``raw_results/*.txt`` of the paper's code (IST-DASLab/sparse-imagenet-transfer): csv with the
header ``dset,model,sparsity,seed,val_acc`` (one file has a trailing comma), one row per run. Which protocol and
architecture a file holds is only in its name (``linear_transfer_results.txt``, ``full_mobilenet_...``), so both
are read from the name unless the caller says (``mode=``/``arch=``). Every label must be known: an unknown task or
method is an error naming the label, never a silently dropped row.

Imported rows have ``source == "paper"``; ``val_acc`` (a fraction, the metric the paper reports for the task) is
``primary``, and also ``top1`` or ``mean_per_class_acc`` per the task card. ``upstream_top1`` comes from the
checkpoint registry where the (method, sparsity, architecture) is registered.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from .. import shipped
from ..errors import TransferbenchError
from ..vocabulary import format_sparsity
from .collect import METRIC_COLUMNS, RUN_COLUMNS, runs_frame
from .select import arch_family

log = logging.getLogger("transferbench")

PAPER = "paper"
HEADER = ("dset", "model", "sparsity", "seed", "val_acc")
MODES = ("linear", "full")
PAPER_ARCHS = ("resnet50", "mobilenet")
# The paper's method labels → this project's method names (transferbench/shipped/checkpoints/table.yaml). RigL at
# 1x and 5x the training budget are different checkpoints, so they stay different methods.
PAPER_METHODS: dict[str, str] = {
    "Dense": "dense",
    "AC/DC": "acdc",
    "RigL ERK 1x": "rigl_erk1x",
    "RigL ERK 5x": "rigl_erk5x",
    "STR": "str",
    "WoodFisher": "woodfisher",
    "LTH-T": "lth_t",
    "M-FAC": "mfac",
}
_SEED = re.compile(r"^(?:seed_?)?(\d+)$")
_FIX = "pass the paper's raw_results/*.txt files unchanged"


@cache
def _paper_cards() -> dict[str, dict[str, Any]]:
    """The task cards of the paper's 12 tasks, read directly: transferbench.tasks imports torch (seconds)."""
    cards = {}
    for name in shipped.names("task"):
        card = shipped.load_shipped("task", name)[0]
        if isinstance(card, dict) and card.get("paper_label") and card.get("kind", "paper") == "paper":
            cards[card["name"]] = card
    return cards


def paper_tasks() -> dict[str, str]:
    """The paper's dataset labels (``paper_label`` of each task card, e.g. ``SUN``) → task names (``sun397``)."""
    labels = {card["paper_label"]: name for name, card in _paper_cards().items()}
    for name in _paper_cards():
        labels.setdefault(name, name)
    return labels


def infer_mode_arch(path: Path, mode: str | None = None, arch: str | None = None) -> tuple[str, str]:
    """(mode, arch) of a reference file: the hints if given, else from the file name as the paper's repo names
    them (``{linear,full}[_mobilenet]_transfer_results.txt``; no architecture in the name means ResNet50)."""
    tokens = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
    if mode is None:
        found = [m for m in MODES if m in tokens]
        if len(found) != 1:
            raise TransferbenchError(
                f"cannot tell linear from full fine-tuning for reference file {path}: its name "
                "should contain 'linear' or 'full' as the paper's files do; or pass "
                "--reference-mode linear|full"
            )
        mode = found[0]
    elif mode not in MODES:
        raise TransferbenchError(f"--reference-mode {mode!r}: choose linear or full")
    if arch is None:
        if "mobilenet" in tokens:
            arch = "mobilenet"
        elif tokens & {"resnet50", "resnet", "rn50"} or {"transfer", "results"} <= tokens:
            arch = "resnet50"
        else:
            raise TransferbenchError(
                f"cannot tell the architecture of reference file {path} from its name; name it "
                "as the paper does ('..._mobilenet_transfer_results.txt' for MobileNetV1) or "
                "pass --reference-arch resnet50|mobilenet"
            )
    return mode, arch


def _fail(path: Path, line: int, what: str) -> TransferbenchError:
    return TransferbenchError(f"reference file {path}, line {line}: {what}; {_FIX} (header {','.join(HEADER)})")


def _rows(path: Path) -> Iterable[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TransferbenchError(
            f"no reference file {path} (--reference); pass the paper's raw_results/*.txt files"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TransferbenchError(f"cannot read reference file {path} (--reference): {exc}") from None
    for i, fields in enumerate(csv.reader(text.splitlines()), start=1):
        if any(f.strip() for f in fields):
            yield i, [f.strip() for f in fields]


def _header(path: Path, fields: list[str]) -> None:
    # the paper's full_transfer_results.txt ends its header with a comma: one trailing empty name is accepted
    names = fields[:-1] if fields and fields[-1] == "" else fields
    if tuple(n.lower() for n in names) != HEADER:
        raise _fail(path, 1, f"header is {','.join(fields)!r}, not {','.join(HEADER)!r}")


def _parse_fraction_field(path: Path, line: int, name: str, text: str, upper: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _fail(path, line, f"{name} {text!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= upper):
        raise _fail(path, line, f"{name} {text!r} is not a fraction in [0, {upper:g}]")
    return value


def read_reference(path: str | Path, mode: str | None = None, arch: str | None = None) -> pd.DataFrame:
    """One reference file as a runs table (``source == "paper"``); see the module docstring."""
    path = Path(path)
    mode, arch = infer_mode_arch(path, mode, arch)
    known = _Known.load()
    rows = [_reference_row(path, line, fields, mode, arch, known) for line, fields in _result_lines(path)]
    if not rows:
        raise _fail(path, 2, "no result rows after the header")
    frame = _merge_repeats(runs_frame(rows, source=PAPER), path)
    _warn_unregistered(frame, known.upstream, path, arch, mode)
    log.info("read %d paper result(s) from %s as %s/%s", len(frame), path, arch, mode)
    return frame


@dataclass(frozen=True)
class _Known:
    """What a reference file's labels are checked and completed against."""

    tasks: dict[str, str]  # the paper's dataset labels → task names
    metrics: dict[str, str]  # task → the metric the paper reports for it
    upstream: dict[tuple[str, float, str], float]  # (method, sparsity, arch family) → registered ImageNet top-1

    @classmethod
    def load(cls) -> _Known:
        return cls(paper_tasks(), _task_metrics(), _registered_upstream())


def _result_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, the 5 fields) of every result line, after checking the header."""
    lines = iter(_rows(path))
    first = next(lines, None)
    if first is None:
        raise _fail(path, 1, "the file is empty")
    _header(path, first[1])
    width = len(first[1])
    for line, fields in lines:
        if len(fields) == width and width == len(HEADER) + 1 and fields[-1] == "":
            fields = fields[:-1]
        if len(fields) != len(HEADER):
            raise _fail(path, line, f"{len(fields)} fields instead of {len(HEADER)}")
        yield line, fields


def _reference_row(path: Path, line: int, fields: list[str], mode: str, arch: str, known: _Known) -> dict[str, Any]:
    """One result line as a row of the runs table; an unknown label or a value out of range is an error."""
    dset, model, sparsity_text, seed_text, acc_text = fields
    if dset not in known.tasks:
        raise _fail(path, line, f"unknown dataset label {dset!r} (known: {', '.join(sorted(known.tasks))})")
    if model not in PAPER_METHODS:
        raise _fail(path, line, f"unknown method label {model!r} (known: {', '.join(PAPER_METHODS)})")
    seed = _SEED.match(seed_text)
    if seed is None:
        raise _fail(path, line, f"seed {seed_text!r} is not like seed_21")
    task, method = known.tasks[dset], PAPER_METHODS[model]
    sparsity = round(_parse_fraction_field(path, line, "sparsity", sparsity_text, 0.999999), 6)
    acc = _parse_fraction_field(path, line, "val_acc", acc_text, 1.0)
    metric = known.metrics.get(task, "top1")
    row = {
        "run_key": f"paper:{arch}:{mode}:{task}:{method}:{sparsity:g}:seed{seed.group(1)}:{path.name}#{line:06d}",
        "task": task,
        "method": method,
        "arch": arch,
        "mode": mode,
        "seed": int(seed.group(1)),
        "target_sparsity": sparsity,
        "measured_sparsity": math.nan,
        "top1": math.nan,
        "mean_per_class_acc": math.nan,
        "primary_metric": metric,
        "primary": acc,
        "solver": "sgd",  # the paper's protocol trains every head and network with SGD
        "upstream_top1": known.upstream.get((method, sparsity, arch), math.nan),
        "total_s": math.nan,
        "created_at": None,
        "checkpoint": None,
        "schema_version": None,
        "versions": None,
        "path": f"{path}:{line}",
    }
    row[METRIC_COLUMNS.get(metric, "top1")] = acc
    return row


def _merge_repeats(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """One run per (task, method, sparsity, seed): repeated rows become one, with the mean of their values.

    The published file lists some (task, method, sparsity, seed) twice with different values (MobileNet full STR
    75%); there is no telling which is right, so the cell's run is their mean."""
    keys = ["task", "method", "target_sparsity", "seed"]
    repeats = frame.duplicated(keys, keep=False)
    if not repeats.any():
        return frame
    numeric = [c for c in ("primary", "top1", "mean_per_class_acc") if c in frame.columns]
    merged = frame[repeats].groupby(keys, as_index=False, sort=False).agg(
        {**{c: "first" for c in frame.columns if c not in keys}, **dict.fromkeys(numeric, "mean")})
    log.warning("reference %s lists %d (task, method, sparsity, seed) more than once with different values; "
                "each is counted once, as the mean of its rows", path.name, len(merged))
    return pd.concat([frame[~repeats], merged[frame.columns]], ignore_index=True)


def _warn_unregistered(frame: pd.DataFrame, upstream: dict, path: Path, arch: str, mode: str) -> None:
    """Warn when (method, sparsity) pairs of the file are not registered checkpoints of ``arch`` (the wrong
    --reference-arch, most likely)."""
    unknown = {
        (m, s)
        for m, s in zip(frame["method"], frame["target_sparsity"], strict=True)
        if (m, round(s, 6), arch) not in upstream
    }
    if unknown:
        method, sparsity = min(unknown)
        log.warning(
            "reference %s (%s/%s): %d (method, sparsity) not in the checkpoint registry for %s, e.g. %s %s; "
            "check --reference-arch",
            path.name,
            arch,
            mode,
            len(unknown),
            arch,
            method,
            format_sparsity(sparsity),
        )


def read_references(paths: Iterable[str | Path], mode: str | None = None, arch: str | None = None) -> pd.DataFrame:
    """Several reference files as one runs table (``source == "paper"``)."""
    frames = [read_reference(p, mode, arch) for p in paths]
    if not frames:
        return runs_frame([], source=PAPER)
    return pd.concat(frames, ignore_index=True)


def _task_metrics() -> dict[str, str]:
    return {name: card.get("metric", "top1") for name, card in _paper_cards().items()}


def _registered_upstream() -> dict[tuple[str, float, str], float]:
    """(method, sparsity, arch family) → registered ImageNet top-1 as a fraction (NaN where not published).

    Read from the shipped table.yaml, not through the registry: that module imports torch, which costs seconds."""
    out = {}
    for spec in shipped.load_shipped("checkpoints", "table")[0] or []:
        top1 = spec.get("upstream_top1")
        key = (spec["method"], round(float(spec["sparsity"]), 6), arch_family(spec["arch"]))
        out[key] = float(top1) / 100.0 if top1 is not None else math.nan
    return out


__all__ = [
    "HEADER",
    "PAPER",
    "PAPER_METHODS",
    "RUN_COLUMNS",
    "infer_mode_arch",
    "paper_tasks",
    "read_reference",
    "read_references",
]
