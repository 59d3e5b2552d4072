"""CelebA's official layout: the aligned-and-cropped images with their 40 attributes and the official partition.

torchvision's layout, which the official archives unpack into (``<data-root>/celeba/``)::

    img_align_celeba/000001.jpg ...   the 202,599 aligned and cropped 178x218 images
    list_attr_celeba.txt              line 1: the image count; line 2: the 40 attribute names;
                                      then "000001.jpg -1  1  1 -1 ..." (-1 absent, 1 present), one line per image
    list_eval_partition.txt           "000001.jpg 0": 0 train (162,770), 1 validation (19,867), 2 test (19,962)

Only these are read (torchvision's CelebA also needs the identity, bounding-box and landmark files, and md5-checks
every one of them on each load). Rows are matched by file name, so the two list files may order their lines
differently; a split keeps the partition file's order. Attributes become 0/1 (``(v + 1) / 2``, as torchvision).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TransferbenchError
from .data import ImageListDataset, MultiLabelTargets, Split
from .official import _check_files, _expected, _require, _require_images, register

IMAGES = "img_align_celeba"
ATTRIBUTES_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
PARTITIONS = {"train": 0, "validation": 1, "test": 2}


def _corrupt(path: Path, line: int, what: str) -> TransferbenchError:
    return TransferbenchError(
        f"{path} line {line}: {what}; the file is corrupt or not CelebA's; re-extract it "
        f"(the official celeba layout is {_expected('celeba')})"
    )


def read_attributes(path: Path) -> tuple[list[str], dict[str, int], np.ndarray]:
    """(the attribute names, {image file: row}, int8 0/1 matrix [images, attributes]) of ``list_attr_celeba.txt``.

    Parsed line by line into one byte per value: the full file's 8 million values never exist as Python strings
    all at once."""
    lines = path.read_text().splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise _corrupt(path, 1, "expected the image count, then the attribute names")
    names = lines[1].split()
    rows: dict[str, int] = {}
    flags: list[bytes] = []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise _corrupt(path, number, f"{len(fields) - 1} values for the {len(names)} attributes")
        values = fields[1:]
        if not set(values) <= {"1", "-1"}:
            column = next(i for i, v in enumerate(values) if v not in ("1", "-1"))
            raise _corrupt(path, number, f"{names[column]} is {values[column]!r}, not -1 or 1")
        rows[fields[0]] = len(flags)
        flags.append(bytes(value == "1" for value in values))
    if len(flags) != int(lines[0]):
        raise _corrupt(path, 1, f"the file announces {int(lines[0])} images but lists {len(flags)}")
    matrix = np.frombuffer(b"".join(flags), dtype=np.int8).reshape(len(flags), len(names)).copy()
    return names, rows, matrix


def read_partition(path: Path, split: str) -> list[str]:
    """The image files of ``split`` in ``list_eval_partition.txt``, in the file's order."""
    wanted, files = str(PARTITIONS[split]), []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise _corrupt(path, number, f"expected '<image file> <0|1|2>', found {line.strip()!r}")
        if fields[1] == wanted:
            files.append(fields[0])
    return files


@register("celeba")
def read_celeba(root: Path, split: str, verify_md5: bool) -> Split:
    """One official partition ("train", "validation" or "test"): every image's 40 attributes as the labels."""
    from torchvision.datasets import CelebA

    images, attributes_file, partition = root / IMAGES, root / ATTRIBUTES_FILE, root / PARTITION_FILE
    md5 = {name: digest for _, digest, name in CelebA.file_list}
    _check_files("celeba", [(path, md5[path.name]) for path in (partition, attributes_file)], verify_md5)
    _require("celeba", images)
    names, rows, matrix = read_attributes(attributes_file)
    files = read_partition(partition, split)
    unannotated = [name for name in files if name not in rows]
    if unannotated:
        raise TransferbenchError(
            f"{len(unannotated)} images of {partition} have no line in {attributes_file} (e.g. {unannotated[0]}); "
            "the two files belong to different releases; re-extract the dataset"
        )
    _require_images("celeba", (images / name for name in files), partition)
    attributes = matrix[np.array([rows[name] for name in files], dtype=np.int64)]
    labels = attributes.astype(np.int64)
    dataset = MultiLabelTargets(ImageListDataset([(images / name, row) for row, name in enumerate(files)]), labels)
    return Split(dataset=dataset, labels=labels, classes=list(names), layout="official", root=root,
                 label_source=attributes_file, targets="multilabel", attributes=attributes,
                 attribute_names=list(names), ids=list(files))
