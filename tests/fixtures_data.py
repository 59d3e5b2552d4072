"""Tiny copies of the 12 downstream datasets in their real on-disk formats, for tests.

``write_task(name, data_root, layout)`` writes every class of the task's card (500 for birds, 397 for
sun397, ...) with a few tiny JPEGs each, either as the pre-split ImageFolder package (``folders``) or as
the official archives unpack (``official``: CIFAR pickles, ``.mat`` files, list files, ...), under
``data_root/<first dirname of the card>/`` where ``transferbench.tasks.load_split`` finds it.

Per-class counts: ``train_per_class`` images in each official part that the paper's train split is made
of (so aircraft's ``train`` and ``val``, dtd's ``train1`` and ``val1`` and flowers' ``train`` and ``val``
each get that many, and the paper's train split twice that), ``test_per_class`` in the test split. For
Caltech, whose split is "the first 30 (60) files of each class", the first ``CALTECH_RICH`` classes hold
``cutoff + test_per_class`` files and the others ``train_per_class``, so the rule is exercised without
writing 31 (61) files for every class. The returned sizes are what the paper's rule gives for the files.

``image_fn(class_index, sample_index, rng) -> PIL.Image`` draws an image; ``sample_index`` counts the
images of one class in the order written, the train split first (for Caltech: file number - 1). Class
indices follow each format's label order, which is also the sorted order of the generated class names.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.io
from PIL import Image

from transferbench.tasks import get_task

ImageFn = Callable[[int, int, np.random.Generator], Image.Image]

CALTECH_RICH = 2  # Caltech classes with more files than the train cutoff
# The paper's per-seed result files, in the development tree's shared/ folder beside the repository (CI lays a copy
# there too); they are not shipped with the package.
PAPER_RESULTS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-results"


def noise_image(size: int) -> ImageFn:
    """Random noise around a class-dependent colour."""

    def draw(class_index: int, sample_index: int, rng: np.random.Generator) -> Image.Image:
        color = np.array([(class_index * 37) % 256, (class_index * 91) % 256, (class_index * 53) % 256])
        pixels = np.clip(color + rng.integers(-30, 31, size=(size, size, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels)

    return draw


COLORS = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                   [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190]])


def learnable_image(class_index: int, sample_index: int, rng: np.random.Generator) -> Image.Image:
    """A class-coloured square with noise: easy enough that even a tiny sparse net transfers."""
    base = COLORS[class_index % len(COLORS)] * (0.6 if class_index >= len(COLORS) else 1.0)
    pixels = np.clip(base + rng.normal(0, 30, size=(16, 16, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


class _Writer:
    """Draws and saves the images of one task; counts samples per class for ``sample_index``."""

    def __init__(self, image_fn: ImageFn, seed: int):
        self.image_fn = image_fn
        self.rng = np.random.default_rng(seed)
        self.count: dict[int, int] = {}

    def image(self, class_index: int) -> Image.Image:
        sample = self.count.get(class_index, 0)
        self.count[class_index] = sample + 1
        return self.image_fn(class_index, sample, self.rng).convert("RGB")

    def jpeg(self, path: Path, class_index: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.image(class_index).save(path, format="JPEG", quality=95)


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{i:03d}" for i in range(n)]


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# ------------------------------------------------------------------------------------ CIFAR pickles


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 byte strings, as in the official CIFAR pickles (written by
    Python 2): they then load with str keys under ``encoding='latin1'`` (torchvision) and with bytes
    keys (``b'data'``) under ``encoding='bytes'``, exactly like the real files."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj: dict) -> None:
    """``obj`` pickled as the official CIFAR files are (protocol 2, Python-2 strings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _cifar_batch(w: _Writer, labels: list[int], key: str, name: str) -> dict:
    rows = [np.asarray(w.image(y).resize((32, 32))).transpose(2, 0, 1).reshape(-1) for y in labels]
    return {"batch_label": name, key: labels, "data": np.stack(rows).astype(np.uint8),
            "filenames": [f"img_{i:05d}.png" for i in range(len(labels))]}


def _cifar(w: _Writer, root: Path, classes: list[str], tr: int, te: int) -> None:
    train = [y for _ in range(tr) for y in range(len(classes))]
    test = [y for _ in range(te) for y in range(len(classes))]
    if len(classes) == 10:
        base = root / "cifar-10-batches-py"
        for b in range(5):  # data_batch_1..5 share the train images
            write_py2_pickle(base / f"data_batch_{b + 1}", _cifar_batch(w, train[b::5], "labels", f"batch {b + 1}"))
        write_py2_pickle(base / "test_batch", _cifar_batch(w, test, "labels", "testing batch 1"))
        write_py2_pickle(base / "batches.meta", {"label_names": classes, "num_cases_per_batch": 10000, "num_vis": 3072})
    else:
        base = root / "cifar-100-python"
        for split, labels in (("train", train), ("test", test)):
            batch = _cifar_batch(w, labels, "fine_labels", f"{split}ing batch 1 of 1")
            write_py2_pickle(base / split, {**batch, "coarse_labels": [y // 5 for y in labels]})
        write_py2_pickle(base / "meta", {"fine_label_names": classes, "coarse_label_names": _names("super", 20)})


# ------------------------------------------------------------------------------------ official layouts


def _aircraft(w: _Writer, root: Path, classes: list[str], tr: int, te: int) -> dict:
    data = root / "fgvc-aircraft-2013b" / "data"
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    image_id = 1000000
    for part, n in (("train", tr), ("val", tr), ("test", te)):
        for y, cls in enumerate(classes):
            for _ in range(n):
                image_id += 1
                w.jpeg(data / "images" / f"{image_id:07d}.jpg", y)
                parts[part].append(f"{image_id:07d} {cls}")
    parts["trainval"] = parts["train"] + parts["val"]
    for part, lines in parts.items():
        _write_lines(data / f"images_variant_{part}.txt", lines)
    _write_lines(data / "variants.txt", classes)
    return {"train_size": len(parts["trainval"]), "test_size": len(parts["test"])}


def _birdsnap(w: _Writer, root: Path, classes: list[str], tr: int, te: int) -> None:
    base = root / "birdsnap"
    rows = ["id\tcommon\tscientific\tdir"] + [
        f"{i + 1}\t{c.replace('_', ' ')}\tAvis {c.lower()}\t{c}" for i, c in enumerate(classes)
    ]
    _write_lines(base / "species.txt", rows)
    test = []
    for y, cls in enumerate(classes):
        for j in range(tr + te):
            w.jpeg(base / "download" / "images" / cls / f"{100000 + j}.jpg", y)
            if j >= tr:
                test.append(f"{cls}/{100000 + j}.jpg")
    _write_lines(base / "test_images.txt", ["path", *test])


def _caltech(w: _Writer, root: Path, classes: list[str], tr: int, te: int, cutoff: int) -> dict:
    sizes = {"train_size": 0, "test_size": 0}
    if cutoff == 30:
        base = root / "caltech101" / "101_ObjectCategories"
        for j in range(3):  # not a class (torchvision and the paper drop it), so not drawn by image_fn
            (base / "BACKGROUND_Google").mkdir(parents=True, exist_ok=True)
            noise_image(8)(0, j, w.rng).save(base / "BACKGROUND_Google" / f"image_{j + 1:04d}.jpg")
    else:
        base = root / "caltech256" / "256_ObjectCategories"
        (base / classes[0]).mkdir(parents=True)
        (base / classes[0] / "RENAME2").write_text("")  # the real archive has stray non-jpg files too
    for y, cls in enumerate(classes):
        n = cutoff + te if y < CALTECH_RICH else tr
        for j in range(1, n + 1):
            name = f"image_{j:04d}.jpg" if cutoff == 30 else f"{cls[:3]}_{j:04d}.jpg"
            w.jpeg(base / cls / name, y)
        sizes["train_size"] += min(n, cutoff)
        sizes["test_size"] += max(n - cutoff, 0)
    return sizes


def _cars(w: _Writer, root: Path, classes: list[str], tr: int, te: int) -> None:
    base = root / "stanford_cars"
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    for folder, annos, n in (("cars_train", base / "devkit" / "cars_train_annos.mat", tr),
                             ("cars_test", base / "cars_test_annos_withlabels.mat", te)):
        records = []
        for y in range(len(classes)):
            for _ in range(n):
                fname = f"{len(records) + 1:05d}.jpg"
                w.jpeg(base / folder / fname, y)
                records.append((1, 1, 7, 7, y + 1, fname))  # classes are 1-based in the .mat files
        annotations = np.empty((1, len(records)), dtype=[(f, "O") for f in fields])  # a MATLAB struct array
        for i, (*box, label, fname) in enumerate(records):
            annotations[0, i] = (*(np.array([[v]], dtype=np.uint16) for v in box),
                                 np.array([[label]], dtype=np.uint8), fname)
        annos.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(annos, {"annotations": annotations})
    scipy.io.savemat(base / "devkit" / "cars_meta.mat",
                     {"class_names": np.array([classes], dtype=object)})  # a 1x196 cell array


def _dtd(w: _Writer, root: Path, classes: list[str], tr: int, te: int) -> dict:
    data = root / "dtd" / "dtd"
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for y, cls in enumerate(classes):
        for part, n in (("train", tr), ("val", tr), ("test", te)):
            for _ in range(n):
                name = f"{cls}/{cls}_{w.count.get(y, 0) + 1:04d}.jpg"
                w.jpeg(data / "images" / name, y)
                parts[part].append(name)
    for part, lines in parts.items():
        _write_lines(data / "labels" / f"{part}1.txt", lines)
    # partition 2 with train and test swapped, so that reading the wrong partition changes the sizes
    for part, other in (("train", "test"), ("val", "val"), ("test", "train")):
        _write_lines(data / "labels" / f"{part}2.txt", parts[other])
    return {"train_size": len(parts["train"]) + len(parts["val"]), "test_size": len(parts["test"])}


def _flowers(w: _Writer, root: Path, classes: list[str], tr: int, te: int) -> dict:
    base = root / "flowers-102"
    labels: list[int] = []
    ids: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    for key, n in (("trnid", tr), ("valid", tr), ("tstid", te)):
        for y in range(len(classes)):
            for _ in range(n):
                labels.append(y + 1)  # 1-based
                ids[key].append(len(labels))
                w.jpeg(base / "jpg" / f"image_{len(labels):05d}.jpg", y)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})
    return {"train_size": len(ids["trnid"]) + len(ids["valid"]), "test_size": len(ids["tstid"])}


def _food101(w: _Writer, root: Path, classes: list[str], tr: int, te: int) -> None:
    base = root / "food-101"
    meta: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for y, cls in enumerate(classes):
        for split, n in (("train", tr), ("test", te)):
            meta[split][cls] = []
            for _ in range(n):
                image = f"{cls}/{1000 + w.count.get(y, 0)}"  # "<class>/<id>", without .jpg
                w.jpeg(base / "images" / f"{image}.jpg", y)
                meta[split][cls].append(image)
    for split, entries in meta.items():
        _write_lines(base / "meta" / f"{split}.txt", [i for images in entries.values() for i in images])
        (base / "meta" / f"{split}.json").write_text(json.dumps(entries))
    _write_lines(base / "meta" / "classes.txt", classes)
    _write_lines(base / "meta" / "labels.txt", [c.replace("_", " ").capitalize() for c in classes])


def _pets(w: _Writer, root: Path, classes: list[str], tr: int, te: int) -> None:
    base = root / "oxford-iiit-pet"
    for split, n in (("trainval", tr), ("test", te)):
        lines = []
        for y, breed in enumerate(classes):
            for _ in range(n):
                image_id = f"{breed}_{w.count.get(y, 0) + 1}"
                w.jpeg(base / "images" / f"{image_id}.jpg", y)
                species = 1 if breed[0].isupper() else 2  # cats are capitalised, dogs are not
                lines.append(f"{image_id} {y + 1} {species} {w.count[y]}")
        _write_lines(base / "annotations" / f"{split}.txt", lines)
    (base / "annotations" / "trimaps").mkdir()


def _sun397(w: _Writer, root: Path, classes: list[str], tr: int, te: int) -> None:
    base = root / "SUN397"
    _write_lines(base / "ClassName.txt", classes)
    parts: dict[str, list[str]] = {"Training": [], "Testing": []}
    for y, cls in enumerate(classes):
        for part, n in (("Training", tr), ("Testing", te)):
            for _ in range(n):
                image = f"{cls}/sun_{y:03d}{w.count.get(y, 0):05d}.jpg"
                w.jpeg(base / image.lstrip("/"), y)
                parts[part].append(image)
    for part, lines in parts.items():
        _write_lines(base / "Partitions" / f"{part}_01.txt", lines)
    # partition 02 swaps the roles, so that reading the wrong partition changes the sizes
    _write_lines(base / "Partitions" / "Training_02.txt", parts["Testing"])
    _write_lines(base / "Partitions" / "Testing_02.txt", parts["Training"])


# ---------------------------------------------------------------------------------------- class names


def _class_names(name: str, n: int) -> list[str]:
    """Synthetic class names in each dataset's style, generated in sorted order (= label order)."""
    if name == "cifar10":
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if name == "caltech256":
        return [f"{i + 1:03d}.object_{i:03d}" for i in range(n - 1)] + [f"{n:03d}.clutter"]
    if name == "aircraft":
        return [f"Model {i:03d}-{'AB'[i % 2]}" for i in range(n)]  # variants contain spaces
    if name == "pets":
        return [f"Breed_{i:02d}" if i < 12 else f"breed_{i:02d}" for i in range(n)]
    if name == "sun397":
        # "/<letter>/<name>" with a few "/<letter>/<name>/<qualifier>" classes, as in ClassName.txt
        letters = [chr(ord("a") + i * 26 // n) for i in range(n)]
        return [f"/{c}/{c}scene_{i:03d}" + ("/outdoor" if i % 50 == 7 else "") for i, c in enumerate(letters)]
    return _names({"birds": "Species", "food101": "dish", "dtd": "texture"}.get(name, "class"), n)


def _folder_name(name: str, cls: str) -> str:
    return cls[3:].replace("/", "_") if name == "sun397" else cls


# -------------------------------------------------------------------------------------------- entry


def write_task(name: str, data_root: Path, layout: str, train_per_class: int = 2, test_per_class: int = 1,
               image_size: int = 8, image_fn: ImageFn | None = None, seed: int = 0) -> dict:
    """Write task ``name`` under ``data_root`` in ``layout`` ("official" or "folders").

    Returns ``{"num_classes", "train_size", "test_size", "root"}``: the sizes of the paper's split of the
    written files and the folder written (``data_root/<first dirname of the card>``).
    """
    task = get_task(name)
    classes = _class_names(name, task.num_classes)
    assert len(classes) == task.num_classes == len(set(classes))
    root = Path(data_root) / task.dirnames[0]
    w = _Writer(image_fn or noise_image(image_size), seed)
    tr, te = train_per_class, test_per_class
    sizes = {"train_size": tr * len(classes), "test_size": te * len(classes)}
    if layout == "folders":
        for folder, n in ((task.folders.train, tr), (task.folders.test, te)):
            for y, cls in enumerate(classes):
                for _ in range(n):
                    w.jpeg(root / folder / _folder_name(name, cls) / f"{w.count.get(y, 0):05d}.jpg", y)
    elif layout == "official":
        writers: dict[str, Callable[..., dict | None]] = {
            "aircraft": _aircraft, "birds": _birdsnap, "cars": _cars, "cifar10": _cifar, "cifar100": _cifar,
            "dtd": _dtd, "flowers": _flowers, "food101": _food101, "pets": _pets, "sun397": _sun397,
            "caltech101": lambda *a: _caltech(*a, cutoff=30), "caltech256": lambda *a: _caltech(*a, cutoff=60),
        }
        sizes.update(writers[name](w, root, classes, tr, te) or {})
    else:
        raise ValueError(f"layout must be 'official' or 'folders', not {layout!r}")
    return {"num_classes": len(classes), **sizes, "root": root}
