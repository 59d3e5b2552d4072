"""The task registry: YAML cards in ``tasks/`` → TaskSpec, plus layout detection and split loading."""

from __future__ import annotations

import typing as _typing
from functools import cache
from pathlib import Path

from .. import shipped
from ..errors import TransferbenchError
from ..lazy import lazy_package as _lazy_package
from .spec import IMAGENET_NORMALIZATION, Normalization, TaskSpec
from .variants import has_variants, narrow_split, resolve_variant, variant_names

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
    "is_multilabel",
    "list_tasks",
    "load_split",
]


@cache
def _cards() -> dict[str, TaskSpec]:
    specs = [TaskSpec.from_card(shipped.load_shipped("task", name)[0]) for name in shipped.names("task")]
    return dict(sorted({spec.name: spec for spec in specs}.items()))


def list_tasks(kind: str | None = "paper") -> list[TaskSpec]:
    """The paper's 12 tasks (default), the offline mini-tasks (``kind="mini"``), the bias study's (``"bias"``), or
    all cards (``None``); a multi-label card's variants (``tasks.variants``) are not listed, only resolved."""
    return [t for t in _cards().values() if kind is None or t.kind == kind]


def get_task(name: str) -> TaskSpec:
    """The task ``name``: a card, or a variant of a multi-label card (``celeba-blond_hair``,
    ``celeba-smiling-grayscale``; ``tasks.variants``)."""
    cards = _cards()
    if name in cards:
        return cards[name]
    variant = _variant(name)
    if variant is None:
        examples = [variant_names(c) for c in cards.values() if has_variants(c)][:1]
        raise TransferbenchError(
            f"unknown task '{name}' (--task); choose one of: {', '.join(cards)}"
            + (f", or a variant: {examples[0]}" if examples else "") + " (see `transferbench tasks list`)"
        )
    return variant


def official_readers() -> dict:
    """Every official-layout reader by name (``official.register``): the paper's tasks' (``tasks.official``) and
    CelebA's, which lives in its own module (a multi-label task with a validation split)."""
    from . import celeba  # noqa: F401  (importing it registers its reader)
    from .official import READERS

    return READERS


def is_multilabel(name: str) -> bool:
    """Whether the task ``name`` is multi-label (``TaskSpec.multilabel``); False for a name no card resolves (a
    record of a task since renamed reads as the single-label task it was)."""
    try:
        return get_task(name).multilabel
    except TransferbenchError:
        return False


@cache
def _variant(name: str) -> TaskSpec | None:
    return resolve_variant(name, _cards())


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
    folders = task.folders
    for base in _candidates(task, data_root):
        if folders is not None and (base / folders.train).is_dir() and (base / folders.test).is_dir():
            return "folders", base
        if (base / task.official.marker).exists():
            return "official", base
    first = data_root / task.dirnames[0]
    expected = (f"either the pre-split folders {first}/{folders.train}/<class>/ and {first}/{folders.test}/<class>/, "
                "or the official layout" if folders is not None else "the official layout")
    raise TransferbenchError(
        f"no {task.name} data under {data_root}: expected {expected} with {first}/{task.official.marker} "
        f"({task.official.description}); missing: {first / task.official.marker}; get it from {task.download}"
    )


SPLITS = ("train", "validation", "test")


def load_split(
    task: TaskSpec | str, split: str, data_root: str | Path | None, verify_md5: bool = False
) -> Split:
    """Load the paper's ``split`` ("train" or "test") of a task from whichever layout is on disk; "validation" is
    the official validation split of a task whose card has ``validation_split: true`` (CelebA's partition 1).

    A variant of a multi-label card (``tasks.variants``) reads the card's split and narrows it to its attribute,
    with its backdoor's cue where it has one."""
    task = get_task(task) if isinstance(task, str) else task
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if split == "validation" and not task.extra.get("validation_split"):
        raise TransferbenchError(
            f"{task.name} has no validation split (its card has no validation_split: true); use its train and test "
            "splits, or hold out part of train with --validation-size"
        )
    from .builtin import load_builtin
    from .folders import list_classes, read_folders

    if task.builtin is not None:
        data = load_builtin(task.builtin, split)
    elif data_root is None:
        folders = (f"the pre-split {task.folders.train}/ and {task.folders.test}/ folders or "
                   if task.folders is not None else "")
        raise TransferbenchError(
            f"{task.name} needs its data: pass --data-root DIR, where DIR/{task.dirnames[0]}/ holds {folders}"
            f"the official layout ({task.official.description}); get it from {task.download}"
        )
    else:
        layout, base = detect_layout(task, data_root)
        if layout == "folders":
            train_classes = list_classes(base / task.folders.train)
            folder = task.folders.train if split == "train" else task.folders.test
            data = read_folders(base / folder, classes=train_classes)
        else:
            data = official_readers()[task.official.reader](base, split, verify_md5)
    data = narrow_split(data, task, split)
    if task.builtin is not None:
        return data
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
    from .data import image_list

    task = get_task(task) if isinstance(task, str) else task
    names = [s for s in SPLITS if s != "validation" or task.extra.get("validation_split")]
    splits = {name: load_split(task, name, data_root, verify_md5) for name in names}
    for split in splits.values():
        files = image_list(split.dataset)
        if files is not None:
            files.check_headers()
    train, test = splits["train"], splits["test"]
    report = {
        "task": task.name,
        "layout": train.layout,
        "num_classes": len(train.classes),
        **{f"{name}_size": len(split) for name, split in splits.items()},
    }
    if "validation" in splits:  # the sizes of the official partition, for --strict
        expected_validation = int(task.extra.get("validation_size", 0))
        if strict and expected_validation and len(splits["validation"]) != expected_validation:
            raise TransferbenchError(
                f"{task.name} under {train.root} has {len(splits['validation'])} validation images, the official "
                f"split has {expected_validation} ({task.split_rule}); re-extract the dataset or drop --strict"
            )
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
