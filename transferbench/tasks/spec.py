"""TaskSpec: one downstream task as described by its YAML card in ``tasks/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET_NORMALIZATION = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass(frozen=True)
class OfficialLayout:
    """The dataset as its official archives unpack, read by ``reader`` (see ``tasks/official.py``)."""

    reader: str
    marker: str  # a path, relative to the root handed to the reader, that only this layout has
    description: str


@dataclass(frozen=True)
class FoldersLayout:
    """The pre-split ImageFolder package: ``<dir>/<train>/<class>/*`` and ``<dir>/<test>/<class>/*``."""

    train: str = "train"
    test: str = "test"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    num_classes: int
    train_size: int  # sizes of the paper's splits, for `data check --strict`
    test_size: int
    metric: str  # the metric the paper's raw results report: "top1" or "mean_per_class"
    normalization: Normalization  # per-dataset statistics, used by full fine-tuning (pitfall P1)
    full_lr: float  # full fine-tuning base LR (0.01 for aircraft and cars, else 0.001; pitfall P3)
    dirnames: tuple[str, ...]  # folder names under --data-root where the task is looked for
    official: OfficialLayout | None
    folders: FoldersLayout | None
    split_rule: str  # human-readable statement of the paper's split
    paper_label: str  # the name used in the paper's raw results ("" for mini-tasks)
    notes: str = ""
    # "paper": one of the 12 tasks; "mini": built-in offline mini-task; "bias": the bias study's task (CelebA)
    kind: str = "paper"
    builtin: str | None = None  # generator of a mini-task's data (transferbench/tasks/builtin.py)
    image_size: int = 224  # the protocol's input size; mini-tasks run at their native 32 px
    download: str = ""  # where the official data comes from (printed when the data is missing)
    # every other card key: a multi-label task's targets, attribute_names, validation_split, backdoors...; a variant's
    # attribute and backdoor (tasks.variants)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        """One sigmoid output per attribute (CelebA's, the bias study's): labels are rows of 0/1, not classes."""
        return self.extra.get("targets") == "multilabel"

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> TaskSpec:
        norm = card["normalization"]
        layouts = card.get("layouts", {})
        known = {
            "name", "title", "num_classes", "train_size", "test_size", "metric", "normalization",
            "full_lr", "dirnames", "layouts", "split_rule", "paper_label", "notes", "kind", "builtin", "image_size",
            "download",
        }
        return cls(
            name=card["name"],
            title=card["title"],
            num_classes=int(card["num_classes"]),
            train_size=int(card["train_size"]),
            test_size=int(card["test_size"]),
            metric=card["metric"],
            normalization=Normalization(tuple(norm["mean"]), tuple(norm["std"])),
            full_lr=float(card["full_lr"]),
            dirnames=tuple(card.get("dirnames", ())),
            official=OfficialLayout(**layouts["official"]) if "official" in layouts else None,
            # a layout only where the card names one: CelebA has no pre-split class folders (its labels are rows)
            folders=FoldersLayout(**(layouts["folders"] or {})) if "folders" in layouts else None,
            split_rule=card["split_rule"],
            paper_label=card.get("paper_label", ""),
            notes=card.get("notes", ""),
            kind=card.get("kind", "paper"),
            builtin=card.get("builtin"),
            image_size=int(card.get("image_size", 224)),
            download=card.get("download", ""),
            extra={k: v for k, v in card.items() if k not in known},
        )
