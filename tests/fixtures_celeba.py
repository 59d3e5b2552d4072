"""A tiny CelebA in the official file formats and torchvision's layout: ``<root>/celeba/{img_align_celeba/, list_*}``.

The list files are written as the official release writes them (a count line and a header line where it has them,
values right-aligned in columns of width 2 or more, single-space separated image ids), so that torchvision's own
CelebA reader, an independent parser, reads them; it also needs the identity, bounding-box and landmark files,
which transferbench never reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ATTRIBUTE_NAMES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
]  # the release's order, typed from its documentation (not read from the task card under test)
LANDMARKS = ["lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y", "leftmouth_x", "leftmouth_y",
             "rightmouth_x", "rightmouth_y"]


@dataclass
class CelebaFixture:
    root: Path  # the folder holding img_align_celeba/ and the list files (<data-root>/celeba)
    files: list[str]  # every image, in the list files' order
    partition: np.ndarray  # [n] 0 train / 1 valid / 2 test
    attributes: np.ndarray  # [n, 40] int8 0/1

    def split(self, part: int) -> tuple[list[str], np.ndarray]:
        chosen = np.flatnonzero(self.partition == part)
        return [self.files[i] for i in chosen], self.attributes[chosen]


def colourful_image(index: int) -> Image.Image:
    """16x20 px (CelebA's portrait shape), clearly coloured (R, G and B far apart) so that a grayscale image or a
    yellow square is told from it pixel by pixel, even after JPEG."""
    rng = np.random.default_rng(index)
    pixels = np.empty((20, 16, 3), dtype=np.uint8)
    pixels[...] = (200, 60, 170)
    pixels[8:, :, 0] = 120 + rng.integers(0, 40)  # a lower half of another red, per image
    return Image.fromarray(pixels)


def write_celeba(data_root: Path, n: int = 60, seed: int = 0) -> CelebaFixture:
    """``n`` images (at least 2 per partition; the partitions interleave, as the release's do not, so a reader that
    took a contiguous block would fail) with seeded random attributes, every attribute having both values."""
    rng = np.random.default_rng(seed)
    root = data_root / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    files = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    partition = np.resize(np.array([0, 0, 0, 1, 2, 0, 1, 2, 0, 0]), n)
    rng.shuffle(partition)
    attributes = (rng.random((n, len(ATTRIBUTE_NAMES))) < rng.uniform(0.2, 0.8, len(ATTRIBUTE_NAMES))).astype(np.int8)
    attributes[0], attributes[1] = 0, 1  # every attribute takes both values
    for i, name in enumerate(files):
        colourful_image(i).save(root / "img_align_celeba" / name, quality=95)

    def rows(values: np.ndarray, width: int) -> list[str]:
        return [name + "".join(f" {v:>{width}}" for v in row) for name, row in zip(files, values, strict=True)]

    signs = attributes.astype(np.int64) * 2 - 1
    (root / "list_attr_celeba.txt").write_text("\n".join([str(n), " ".join(ATTRIBUTE_NAMES), *rows(signs, 2)]) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(f"{f} {p}" for f, p in zip(files, partition, strict=True))
                                                  + "\n")
    (root / "identity_CelebA.txt").write_text("\n".join(f"{f} {rng.integers(1, 10178)}" for f in files) + "\n")
    boxes = rng.integers(1, 400, size=(n, 4))
    (root / "list_bbox_celeba.txt").write_text(
        "\n".join([str(n), "image_id x_1 y_1 width height", *rows(boxes, 4)]) + "\n")
    landmarks = rng.integers(60, 160, size=(n, len(LANDMARKS)))
    (root / "list_landmarks_align_celeba.txt").write_text(
        "\n".join([str(n), " ".join(LANDMARKS), *rows(landmarks, 4)]) + "\n")
    return CelebaFixture(root=root, files=files, partition=partition, attributes=attributes)
