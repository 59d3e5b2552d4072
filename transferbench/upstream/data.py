"""The upstream datasets (procedural shapes offline, ImageNet as an ImageFolder)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .. import synthetic
from ..errors import TransferbenchError
from ..tasks import IMAGENET_NORMALIZATION, Transformed
from ..tasks.builtin import ArrayDataset
from ..transforms import TransformConfig, build_transform


def upstream_datasets(recipe: dict, data_root: Path | None) -> tuple[Dataset, Dataset]:
    size = int(recipe["image_size"])
    if recipe["dataset"] == "shapes":
        train = ArrayDataset(*synthetic.make_shapes(int(recipe["train_size"]), size=size, seed=0))
        test = ArrayDataset(*synthetic.make_shapes(int(recipe["test_size"]), size=size, seed=1))
        cfg = TransformConfig(image_size=size, resize_size=size, mean=(0.2, 0.2, 0.2), std=(0.3, 0.3, 0.3))
        train_cfg = cfg
    elif recipe["dataset"] == "imagenet":
        from torchvision.datasets import ImageFolder

        if data_root is None or not (Path(data_root) / "train").is_dir():
            raise TransferbenchError(
                "--dataset imagenet needs --data-root DIR with DIR/train/<wnid>/ and DIR/val/<wnid>/"
            )
        cfg = TransformConfig(image_size=size, mean=IMAGENET_NORMALIZATION.mean, std=IMAGENET_NORMALIZATION.std)
        train_cfg = TransformConfig(**{**cfg.to_dict(), "augment": True})
        train, test = ImageFolder(Path(data_root) / "train"), ImageFolder(Path(data_root) / "val")
    else:
        raise TransferbenchError(f"unknown upstream dataset '{recipe['dataset']}' (--dataset); use shapes or imagenet")
    return Transformed(train, build_transform(train_cfg)), Transformed(test, build_transform(cfg))
