"""Readers for the official on-disk layout of each task, as the official archives unpack.

Each reader is ``reader(root: Path, split: "train"|"test", verify_md5: bool) -> Split`` and returns the
paper's split (transfer_protocol.md §1, P10). ``root`` is the folder that contains the card's
``layouts.official.marker``. torchvision.datasets classes are used where they exist; correctness never
depends on md5 sums of the official archive files (structure and counts are checked instead), and
``verify_md5=True`` additionally runs torchvision's md5 checks where torchvision has them.

Only CIFAR-10/100 (the pickles) and Flowers-102 (the two ``.mat`` files) have per-file md5 sums in
torchvision. The other datasets have an md5 only for the downloaded archive, which is gone once unpacked
(or none at all: Caltech images, Cars, Birdsnap, SUN397's Partitions), so ``verify_md5`` is a no-op there.

Missing or incomplete data raises a one-line TransferbenchError naming the missing path and the expected
layout (the card's ``layouts.official.description``), never torchvision's generic RuntimeError.

No file is unpickled with ``pickle.load``: CIFAR's batches go through ``cifar.CifarUnpickler``, which admits only
the globals a genuine batch references (issue #15). torchvision parses the other layouts' metadata (text, JSON,
MATLAB files: no code in them), and every image-file layout returns an ``ImageListDataset``, so all images are
decoded by one function (``data.open_image``) whose errors name the file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision.datasets import (
    CIFAR10,
    CIFAR100,
    DTD,
    Caltech101,
    Caltech256,
    FGVCAircraft,
    Flowers102,
    Food101,
    OxfordIIITPet,
    StanfordCars,
)
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity

from ..errors import TransferbenchError
from .cifar import read_cifar
from .data import ImageListDataset, Split

Reader = Callable[[Path, str, bool], Split]

READERS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        READERS[name] = fn
        return fn

    return wrap


# ---------------------------------------------------------------------------------------------- helpers


def _expected(reader: str) -> str:
    """The card's description of the official layout, so error messages and cards never disagree."""
    from . import list_tasks  # the package imports this module, so look the cards up at call time

    return next((t.official.description for t in list_tasks(None) if t.official and t.official.reader == reader), "")


def _require(reader: str, *paths: Path) -> None:
    for path in paths:
        if not path.exists():
            raise TransferbenchError(
                f"{path} is missing; the official {reader} layout is {_expected(reader)}"
            )


def _require_images(reader: str, files: Iterable[str | Path], listed_in: Path) -> None:
    """Every image a list file names must exist, checked with one directory listing per folder.

    torchvision only opens images in ``__getitem__``; without this an incomplete extraction would
    surface hours into a run instead of at load time.
    """
    paths = [Path(f) for f in files]
    listings: dict[Path, set[str]] = {}
    missing: list[Path] = []
    for path in paths:
        if path.parent not in listings:
            listings[path.parent] = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
        if path.name not in listings[path.parent]:
            missing.append(path)
    if missing:
        raise TransferbenchError(
            f"{len(missing)} of {len(paths)} images listed in {listed_in} are missing (e.g. {missing[0]}); "
            f"re-extract the dataset; the official {reader} layout is {_expected(reader)}"
        )


# What torchvision raises on unreadable or truncated metadata files.
_READ_ERRORS = (OSError, RuntimeError, ValueError, KeyError, IndexError, EOFError)


def _open(reader: str, cls: type, root: Path, **kwargs: Any) -> Any:
    """Instantiate a torchvision dataset without download or transform, as a TransferbenchError on failure."""
    try:
        return cls(root=str(root), download=False, transform=None, **kwargs)
    except _READ_ERRORS as exc:
        raise TransferbenchError(
            f"cannot read the official {reader} layout under {root} ({type(exc).__name__}: {exc}); "
            f"expected {_expected(reader)}"
        ) from exc


def _split(dataset: Dataset, labels: Sequence[int], classes: Sequence[str], base: Path,
           paper_split: bool = True, label_source: Path | None = None) -> Split:
    return Split(dataset=dataset, labels=[int(y) for y in labels], classes=[str(c) for c in classes],
                 layout="official", root=base, paper_split=paper_split, label_source=label_source)


def _images(samples: Iterable[tuple[str | Path, int]]) -> ImageListDataset:
    """(image file, label) pairs as the dataset every image-file layout returns; labels as plain ints."""
    return ImageListDataset([(Path(path), int(label)) for path, label in samples])


def _check_files(reader: str, table: Iterable[tuple[Path, str]], verify_md5: bool) -> None:
    """Each file exists and, with ``verify_md5``, has torchvision's md5 (an error that names the offending file)."""
    for path, md5 in table:
        _require(reader, path)
        if verify_md5 and not check_integrity(str(path), md5):
            raise TransferbenchError(
                f"{path} does not have torchvision's md5 {md5} (--verify-md5); re-extract the official "
                "archive, or drop --verify-md5 to check the structure only"
            )


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class _Md5OptIn:
    """Mixin for torchvision datasets that md5-check their files on every load.

    A re-pickled or re-saved copy with the same content is valid data, so by default the check is
    structural (the files exist); ``verify_md5=True`` restores torchvision's md5 check, with an error
    that names the offending file.
    """

    reader: str

    def __init__(self, *args: Any, verify_md5: bool, **kwargs: Any):
        self._verify_md5 = verify_md5
        super().__init__(*args, **kwargs)

    def _md5_table(self) -> list[tuple[Path, str]]:
        raise NotImplementedError

    def _check_integrity(self) -> bool:
        _check_files(self.reader, self._md5_table(), self._verify_md5)
        return True


# ------------------------------------------------------------------------------------------------ CIFAR


def _read_cifar(reader: str, cls: type[CIFAR10], root: Path, split: str, verify_md5: bool) -> Split:
    """torchvision's file table (names and md5 sums) for the files; ``cifar.read_cifar`` for their content."""
    folder = root / cls.base_folder
    meta = folder / cls.meta["filename"]
    # every file of both splits must be there (an incomplete extraction is reported whichever split is read)
    _check_files(reader, [*((folder / name, md5) for name, md5 in (*cls.train_list, *cls.test_list)),
                          (meta, cls.meta["md5"])], verify_md5)
    batches = [folder / name for name, _ in (cls.train_list if split == "train" else cls.test_list)]
    # CIFAR-100 targets are the fine labels, as torchvision reads them
    ds = read_cifar(batches, meta, cls.meta["key"], "labels" if cls is CIFAR10 else "fine_labels")
    return _split(ds, ds.targets, ds.classes, folder, label_source=batches[0])


@register("cifar10")
def read_cifar10(root: Path, split: str, verify_md5: bool) -> Split:
    return _read_cifar("cifar10", CIFAR10, root, split, verify_md5)


@register("cifar100")
def read_cifar100(root: Path, split: str, verify_md5: bool) -> Split:
    return _read_cifar("cifar100", CIFAR100, root, split, verify_md5)


# ----------------------------------------------------------------------------- list-file torchvision sets


class _Flowers102(_Md5OptIn, Flowers102):
    reader = "flowers"

    def _md5_table(self) -> list[tuple[Path, str]]:
        # imagelabels.mat and setid.mat; the "image" entry is the downloaded archive
        return [(self._base_folder / name, md5) for key, (name, md5) in self._file_dict.items() if key != "image"]


def _read_parts(reader: str, cls: type, root: Path, parts: Sequence[str], listed_in: Callable[[str], Path],
                base: Path, label_source: Path | None = None, **kwargs: Any) -> Split:
    """The union of official splits ``parts`` (e.g. train + val), checked to share one class list; the labels
    come from ``label_source`` (default: the first part's list file)."""
    datasets = []
    for part in parts:
        _require(reader, listed_in(part))
        ds = _open(reader, cls, root, split=part, **kwargs)
        _require_images(reader, ds._image_files, listed_in(part))
        if datasets and list(ds.classes) != list(datasets[0].classes):
            raise TransferbenchError(
                f"{listed_in(part)} and {listed_in(parts[0])} name different classes; "
                f"re-extract the dataset; the official {reader} layout is {_expected(reader)}"
            )
        datasets.append(ds)
    dataset = _images((path, y) for ds in datasets for path, y in zip(ds._image_files, ds._labels, strict=True))
    return _split(dataset, [y for _, y in dataset.samples], datasets[0].classes, base,
                  label_source=label_source or listed_in(parts[0]))


@register("aircraft")
def read_aircraft(root: Path, split: str, verify_md5: bool) -> Split:
    data = root / "fgvc-aircraft-2013b" / "data"
    _require("aircraft", data / "variants.txt", data / "images")
    part = "trainval" if split == "train" else "test"  # never `train` alone (3,334 images; P10)
    return _read_parts("aircraft", FGVCAircraft, root, [part], lambda p: data / f"images_variant_{p}.txt",
                       data.parent, annotation_level="variant")


@register("dtd")
def read_dtd(root: Path, split: str, verify_md5: bool) -> Split:
    data = root / "dtd" / "dtd"
    _require("dtd", data / "images")
    parts = ["train", "val"] if split == "train" else ["test"]  # partition 1: train1 + val1 / test1
    return _read_parts("dtd", DTD, root, parts, lambda p: data / "labels" / f"{p}1.txt", root / "dtd",
                       partition=1)


@register("food101")
def read_food101(root: Path, split: str, verify_md5: bool) -> Split:
    base = root / "food-101"
    _require("food101", base / "images")
    return _read_parts("food101", Food101, root, [split], lambda p: base / "meta" / f"{p}.json", base)


@register("flowers")
def read_flowers(root: Path, split: str, verify_md5: bool) -> Split:
    base = root / "flowers-102"
    _require("flowers", base / "jpg")
    parts = ["train", "val"] if split == "train" else ["test"]  # train + val (2,040), as Kornblith et al.
    return _read_parts("flowers", _Flowers102, root, parts, lambda p: base / "setid.mat", base,
                       label_source=base / "imagelabels.mat", verify_md5=verify_md5)


@register("pets")
def read_pets(root: Path, split: str, verify_md5: bool) -> Split:
    base = root / "oxford-iiit-pet"
    part = "trainval" if split == "train" else "test"
    listed_in = base / "annotations" / f"{part}.txt"
    _require("pets", listed_in, base / "images")
    ds = _open("pets", OxfordIIITPet, root, split=part, target_types="category")
    _require_images("pets", ds._images, listed_in)
    return _split(_images(zip(ds._images, ds._labels, strict=True)), ds._labels, ds.classes, base,
                  label_source=listed_in)


@register("cars")
def read_cars(root: Path, split: str, verify_md5: bool) -> Split:
    base = root / "stanford_cars"
    annos, images = (
        (base / "devkit" / "cars_train_annos.mat", base / "cars_train") if split == "train"
        else (base / "cars_test_annos_withlabels.mat", base / "cars_test")
    )
    _require("cars", base / "devkit" / "cars_meta.mat", annos, images)
    ds = _open("cars", StanfordCars, root, split=split)
    _require_images("cars", [path for path, _ in ds._samples], annos)
    dataset = _images(ds._samples)  # the .mat file's labels are numpy integers; the dataset's are ints
    return _split(dataset, [label for _, label in dataset.samples], ds.classes, base, label_source=annos)


# ---------------------------------------------------------------------------------------------- Caltech


def _read_caltech(reader: str, cls: type, root: Path, split: str, first_n: int, folder: str,
                  filename: Callable[[str, int], str], **kwargs: Any) -> Split:
    """torchvision's Caltech dataset (which has no split) cut by the paper's rule: a class's files
    numbered 1..first_n are train, the rest test (utils/datasets.py; deterministic, nothing random).

    torchvision orders samples by sorted category, then file number 1..n, and assumes contiguous
    numbering; ``filename(category, number)`` is its file naming, used to check that the files exist.
    """
    base = root / reader  # torchvision reads <root>/caltech101 and <root>/caltech256
    categories = base / folder
    _require(reader, categories)
    ds = _open(reader, cls, root, **kwargs)
    paths = [categories / ds.categories[y] / filename(ds.categories[y], n) for y, n in zip(ds.y, ds.index, strict=True)]
    _require_images(reader, paths, categories)
    keep = [i for i, n in enumerate(ds.index) if (n <= first_n) == (split == "train")]
    return _split(_images((paths[i], ds.y[i]) for i in keep), [ds.y[i] for i in keep], ds.categories, base)


@register("caltech101")
def read_caltech101(root: Path, split: str, verify_md5: bool) -> Split:
    # torchvision drops BACKGROUND_Google (101 classes) with list.remove, so the folder has to be there
    _require("caltech101", root / "caltech101" / "101_ObjectCategories" / "BACKGROUND_Google")
    return _read_caltech("caltech101", Caltech101, root, split, 30, "101_ObjectCategories",
                         lambda c, n: f"image_{n:04d}.jpg", target_type="category")


@register("caltech256")
def read_caltech256(root: Path, split: str, verify_md5: bool) -> Split:
    # 257 classes, 257.clutter kept (P10); files are <NNN>_<number>.jpg in <NNN>.<name>/
    return _read_caltech("caltech256", Caltech256, root, split, 60, "256_ObjectCategories",
                         lambda c, n: f"{c[:3]}_{n:04d}.jpg")


# ------------------------------------------------------------------------------- no torchvision reader


@register("sun397")
def read_sun397(root: Path, split: str, verify_md5: bool) -> Split:
    """Official partition 01. torchvision's SUN397 has no partitions and rglobs all 108,754 images, so
    the classes come from ClassName.txt and the images from Partitions/{Training,Testing}_01.txt."""
    base = root / "SUN397"
    names = _lines(base / "ClassName.txt")  # "/a/abbey", "/a/apartment_building/outdoor", ...
    index = {name: i for i, name in enumerate(names)}
    listing = f"{'Training' if split == 'train' else 'Testing'}_01.txt"
    candidates = [base / "Partitions" / listing, root / "Partitions" / listing]
    listed_in = next((path for path in candidates if path.is_file()), None)
    if listed_in is None:
        raise TransferbenchError(
            f"{candidates[0]} is missing (also looked for {candidates[1]}); SUN397's partitions ship "
            f"separately: unpack the official Partitions.zip into {base / 'Partitions'}"
        )
    samples = []
    for line in _lines(listed_in):  # "/a/abbey/sun_aaaa.jpg"
        label = index.get(line.rsplit("/", 1)[0])
        if label is None:
            raise TransferbenchError(
                f"{listed_in} lists {line}, whose class is not in {base / 'ClassName.txt'}; "
                "the partition files and the images belong to different SUN397 releases"
            )
        samples.append((base / line.lstrip("/"), label))
    _require_images("sun397", (path for path, _ in samples), listed_in)
    classes = [name[3:].replace("/", "_") for name in names]  # "/a/abbey" -> "abbey"
    return _split(ImageListDataset(samples), [y for _, y in samples], classes, base)


@register("birdsnap")
def read_birdsnap(root: Path, split: str, verify_md5: bool) -> Split:
    """The official Birdsnap release: test = test_images.txt, train = every other downloaded image.

    This is not the paper's split (robust-models-transfer's own, 8,171 test images), hence
    ``paper_split=False``. get_birdsnap.py downloads from URLs of which some are dead, so listed test
    images that are absent are skipped rather than treated as an incomplete extraction.
    """
    base = root / "birdsnap"
    species, test_list = base / "species.txt", base / "test_images.txt"
    _require("birdsnap", test_list)
    images = next((p for p in (base / "download" / "images", base / "images") if p.is_dir()), None)
    if images is None:
        raise TransferbenchError(
            f"{base / 'download' / 'images'} (or {base / 'images'}) is missing; run the release's "
            f"get_birdsnap.py; the official birdsnap layout is {_expected('birdsnap')}"
        )
    try:
        with species.open(newline="") as f:  # TSV with a header; `dir` names each species' folder
            dirs = [row["dir"] for row in csv.DictReader(f, delimiter="\t")]
    except KeyError as exc:
        raise TransferbenchError(f"{species} has no `dir` column; expected the official species.txt") from exc
    # header line, then "<species_dir>/<file>.jpg" (first field)
    test = {line.split()[0] for line in _lines(test_list)[1:]}
    samples = []
    for label, folder in enumerate(dirs):
        present = sorted(os.listdir(images / folder)) if (images / folder).is_dir() else []
        for name in present:
            if name.lower().endswith(IMG_EXTENSIONS) and (f"{folder}/{name}" in test) == (split == "test"):
                samples.append((images / folder / name, label))
    return _split(ImageListDataset(samples), [y for _, y in samples], dirs, base, paper_split=False)
