"""The task registry: YAML cards in ``tasks/`` → TaskSpec, plus layout detection and split loading."""

from __future__ import annotations

import typing as _typing
from functools import cache
from pathlib import Path

from .. import shipped
from ..errors import TransferbenchError
from ..lazy import lazy_package as _lazy_package
from .spec import IMAGENET_NORMALIZATION, Normalization, TaskSpec

# the cards are YAML, read without torch (`tasks list`, flag choices); the readers, which need torch and
# torchvision, are imported when a split is loaded
_lazy_package(__name__, {".data": ("Split", "Transformed")})

if _typing.TYPE_CHECKING:
    from .data import Split, Transformed

__all__ = [
    "IMAGENET_NORMALIZATION",
    "Normalization",
    "Split",
    "TaskSpec",
    "Transformed",
    "check_data",
    "detect_layout",
    "get_task",
    "list_tasks",
    "load_split",
]


@cache
def _cards() -> dict[str, TaskSpec]:
    specs = [TaskSpec.from_card(shipped.load_shipped("task", name)[0]) for name in shipped.names("task")]
    return dict(sorted({spec.name: spec for spec in specs}.items()))


def list_tasks(kind: str | None = "paper") -> list[TaskSpec]:
    """The paper's 12 tasks (default), the offline mini-tasks (``kind="mini"``), or all (``None``)."""
    return [t for t in _cards().values() if kind is None or t.kind == kind]


def get_task(name: str) -> TaskSpec:
    cards = _cards()
    if name not in cards:
        raise TransferbenchError(
            f"unknown task '{name}' (--task); choose one of: {', '.join(cards)} (see `transferbench tasks list`)"
        )
    return cards[name]


def _candidates(task: TaskSpec, data_root: Path) -> list[Path]:
    return [data_root / d for d in task.dirnames] + [data_root]


def detect_layout(task: TaskSpec, data_root: str | Path) -> tuple[str, Path]:
    """Find the task under ``data_root``: returns ("folders"|"official", root for that layout's reader)."""
    data_root = Path(data_root).expanduser()
    if not data_root.is_dir():
        raise TransferbenchError(
            f"data root {data_root} does not exist (--data-root); point it at the folder that holds the "
            f"'{task.dirnames[0]}/' dataset folder"
        )
    for base in _candidates(task, data_root):
        if (base / task.folders.train).is_dir() and (base / task.folders.test).is_dir():
            return "folders", base
        if (base / task.official.marker).exists():
            return "official", base
    first = data_root / task.dirnames[0]
    raise TransferbenchError(
        f"no {task.name} data under {data_root}: expected either the pre-split folders "
        f"{first}/{task.folders.train}/<class>/ and {first}/{task.folders.test}/<class>/, or the official "
        f"layout with {first}/{task.official.marker} ({task.official.description}); "
        f"missing: {first / task.official.marker}; get it from {task.download}"
    )


def load_split(
    task: TaskSpec | str, split: str, data_root: str | Path | None, verify_md5: bool = False
) -> Split:
    """Load the paper's ``split`` ("train" or "test") of a task from whichever layout is on disk."""
    task = get_task(task) if isinstance(task, str) else task
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    from .builtin import load_builtin
    from .folders import list_classes, read_folders
    from .official import READERS

    if task.builtin is not None:
        return load_builtin(task.builtin, split)
    if data_root is None:
        raise TransferbenchError(
            f"{task.name} needs its data: pass --data-root DIR, where DIR/{task.dirnames[0]}/ holds the pre-split "
            f"train/ and {task.folders.test}/ folders or the official layout ({task.official.description}); "
            f"get it from {task.download}"
        )
    layout, base = detect_layout(task, data_root)
    if layout == "folders":
        train_classes = list_classes(base / task.folders.train)
        folder = task.folders.train if split == "train" else task.folders.test
        data = read_folders(base / folder, classes=train_classes)
    else:
        data = READERS[task.official.reader](base, split, verify_md5)
    if len(data.classes) != task.num_classes:
        raise TransferbenchError(
            f"{data.root} has {len(data.classes)} classes but {task.name} has {task.num_classes}; "
            f"the data is incomplete or belongs to another dataset (expected: {task.split_rule})"
        )
    if len(data) == 0:
        raise TransferbenchError(f"the {split} split of {task.name} under {data.root} holds no images")
    data.check_labels()
    return data


def check_data(task: TaskSpec | str, data_root: str | Path, strict: bool = False,
               verify_md5: bool = False) -> dict:
    """What `transferbench data check` prints; raises TransferbenchError when the data is unusable.

    Beyond loading (files present, labels within the classes, CIFAR's arrays shaped as 32x32x3 images), every image
    file's header is read: an unreadable file or one too large to decode (a decompression bomb) is an error here,
    not hours into a run.
    """
    from .data import ImageListDataset

    task = get_task(task) if isinstance(task, str) else task
    train = load_split(task, "train", data_root, verify_md5)
    test = load_split(task, "test", data_root, verify_md5)
    for split in (train, test):
        if isinstance(split.dataset, ImageListDataset):
            split.dataset.check_headers()
    report = {
        "task": task.name,
        "layout": train.layout,
        "num_classes": len(train.classes),
        "train_size": len(train),
        "test_size": len(test),
    }
    matches = (task.train_size in (0, len(train))) and len(test) == task.test_size
    if strict and not matches:
        raise TransferbenchError(
            f"{task.name} under {train.root} has {len(train)} train / {len(test)} test images, the paper's "
            f"split has {task.train_size or '?'} / {task.test_size} ({task.split_rule}); "
            "re-extract the dataset or drop --strict"
        )
    if strict and not train.paper_split:
        raise TransferbenchError(
            f"the {train.layout} layout of {task.name} at {train.root} cannot reproduce the paper's split "
            f"({task.split_rule}); use the pre-split package"
        )
    return report
