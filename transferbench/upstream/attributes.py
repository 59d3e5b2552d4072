"""Multi-label upstream data: a task with one sigmoid output per attribute (the CelebA bias study, §1.1-1.3).

``upstream --dataset celeba --data-root D`` trains on CelebA's official train partition, chooses its checkpoint on
the official validation partition and reports the test partition; ``--dataset faces`` is the offline CelebA-like
mini-task. Any task whose card says ``targets: multilabel`` (and its one-attribute variants, ``celeba-blond_hair``)
qualifies; the splits come from ``transferbench.tasks.load_split``.

Preprocessing is the study's (``utils/datasets.py:celeba_get_datasets``, bias_analysis.md §1.1): train = Resize 256,
RandomCrop 224, horizontal flip, Normalize(0.5, 0.5); evaluation = Resize 256, CenterCrop 224. The reference lists
the normalisation for the training transform only; it is applied to the evaluation images too here, since a model
trained on normalised inputs is meant to be evaluated on the same scale. At another ``image_size`` (the 32 px
``faces``) the resize keeps the 256/224 ratio.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TransferbenchError
from ..transforms import TransformConfig, build_transform
from .data import UpstreamData

# The study's Normalize(mean=0.5, std=0.5) on every channel
STUDY_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def is_attribute_task(name: str) -> bool:
    """Whether ``name`` is a multi-label task (a card with ``targets: multilabel`` or one of its variants)."""
    from ..tasks import is_multilabel

    return is_multilabel(name)


def has_validation_split(name: str) -> bool:
    """Whether the upstream dataset ``name`` has an official validation split (its card's ``validation_split``),
    on which the run chooses its checkpoint; shapes and ImageNet (its val folder is the test set here) have none."""
    from ..tasks import get_task

    return is_attribute_task(name) and bool(get_task(name).extra.get("validation_split"))


def attribute_transforms(image_size: int) -> tuple[TransformConfig, TransformConfig]:
    """(train, evaluation) transform configs of the study at ``image_size`` (224 for CelebA)."""
    mean, std = STUDY_NORMALIZATION
    evaluation = TransformConfig(image_size=image_size, resize_size=round(image_size * 256 / 224), mean=mean,
                                 std=std)
    train = TransformConfig(**{**evaluation.to_dict(), "augment": True, "crop": "resize_random"})
    return train, evaluation


def attribute_data(recipe: dict, data_root: Path | None) -> UpstreamData:
    """The train, validation and test splits of the recipe's multi-label ``dataset`` under the study's transforms.

    A task without an official validation split gets none (its checkpoint is the last epoch's model). A recipe's
    ``train_size`` trains on the first that many training images (a CPU-scale run); validation and test stay whole.
    """
    from ..tasks import Transformed, get_task, load_split
    from ..tasks.limit import take

    task = get_task(recipe["dataset"])
    train_cfg, eval_cfg = attribute_transforms(int(recipe["image_size"]))
    train = load_split(task, "train", data_root)
    if train.targets != "multilabel":
        raise TransferbenchError(f"--dataset {recipe['dataset']}: its train split is not multi-label; upstream trains "
                                 "on shapes, imagenet or a multi-label task (celeba, faces)")
    if recipe.get("train_size") is not None:
        train = take(train, list(range(min(int(recipe["train_size"]), len(train)))))
    test = load_split(task, "test", data_root)
    validation = load_split(task, "validation", data_root) if task.extra.get("validation_split") else None
    evaluated = build_transform(eval_cfg)
    return UpstreamData(
        train=Transformed(train.dataset, build_transform(train_cfg)),
        test=Transformed(test.dataset, evaluated),
        outputs=len(train.classes),
        validation=None if validation is None else Transformed(validation.dataset, evaluated),
        multilabel=True,
    )
