"""CIFAR-10/100's python batches, read without running code from them.

The official batches are Python-2 pickles. ``pickle.load`` imports and calls whatever a pickle names, so a crafted
``data_batch_1`` would run its payload while loading (issue #15). ``CifarUnpickler`` resolves only the globals a
genuine batch references — a genuine batch is a dict of Python-2 strings, lists of ints and strings, and one uint8
array, which numpy pickled as ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype`` — and
refuses anything else before it is imported. Every file is then checked for the structure a genuine batch has
(uint8 pixels of N x 3072, N integer labels within the class list), so a corrupt or foreign file is a one-line
error here instead of a crash hours into training.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import TransferbenchError

try:  # numpy >= 2 keeps _reconstruct in numpy._core; importing numpy.core there warns
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

# (module, name) -> object, for every global a genuine batch references. The official files (numpy 1, Python 2)
# name numpy.core.multiarray; a copy re-pickled under numpy 2 names numpy._core.multiarray: the same function.
GENUINE_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

PIXELS_PER_IMAGE = 3 * 32 * 32

_FIX = "re-extract the official archive (the python version of CIFAR)"


class CifarUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR batches: Python-2 strings decoded as latin-1 (as torchvision reads them), and no
    global but ``GENUINE_CIFAR_GLOBALS``; any other raises a TransferbenchError naming ``path`` before the global
    is imported, so nothing from the file runs."""

    def __init__(self, file: IO[bytes], path: Path):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return GENUINE_CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise TransferbenchError(
                f"{self.path} is not a genuine CIFAR batch: it asks to import {module}.{name}, which no CIFAR "
                f"file does (nothing from it was run); {_FIX}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise TransferbenchError(f"{self.path} is not a genuine CIFAR batch (it holds persistent ids); {_FIX}")


def load_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR file (a batch or the meta file) as a dict with str keys, through ``CifarUnpickler``."""
    try:
        with path.open("rb") as f:
            content = CifarUnpickler(f, path).load()
    except TransferbenchError:
        raise
    except OSError as exc:
        raise TransferbenchError(f"cannot read {path} ({exc}); {_FIX}") from None
    except Exception as exc:  # only numpy's array constructors can have run: any error means a malformed file
        raise TransferbenchError(
            f"{path} is not a genuine CIFAR batch ({type(exc).__name__}: {exc}); {_FIX}"
        ) from None
    if not isinstance(content, dict):
        raise TransferbenchError(f"{path} is not a genuine CIFAR batch (it holds a {type(content).__name__}, "
                                 f"not a dict); {_FIX}")
    return content


def read_cifar_classes(path: Path, key: str) -> list[str]:
    """The class names of a meta file (``label_names`` for CIFAR-10, ``fine_label_names`` for CIFAR-100)."""
    names = load_cifar_pickle(path).get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise TransferbenchError(f"{path} has no list of class names under '{key}'; {_FIX}")
    return names


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """One batch's pixels (uint8 [N, 32, 32, 3], as torchvision lays them out) and labels (``label_key``: ``labels``
    or CIFAR-100's ``fine_labels``), each label checked to be a class index below ``num_classes``."""
    batch = load_cifar_pickle(path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == PIXELS_PER_IMAGE):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise TransferbenchError(f"{path}: 'data' must be uint8 pixels of N x {PIXELS_PER_IMAGE} (32x32x3 images), "
                                 f"found {found}; {_FIX}")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(type(y) is int for y in labels):
        raise TransferbenchError(f"{path}: '{label_key}' must be a list of {len(data)} integer labels, one per "
                                 f"image; {_FIX}")
    bad = next(((i, y) for i, y in enumerate(labels) if not 0 <= y < num_classes), None)
    if bad is not None:
        raise TransferbenchError(
            f"{path}: label {bad[1]} of image {bad[0]} is outside the {num_classes} classes (0..{num_classes - 1}) "
            f"of the meta file; the batch is corrupt or from another dataset; {_FIX}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


class CifarImages(Dataset):
    """CIFAR's images as torchvision's CIFAR10 holds them (``data`` uint8 [N, 32, 32, 3], ``targets``,
    ``classes``); ``dataset[i]`` is ``(PIL image, label)``."""

    def __init__(self, data: np.ndarray, targets: Sequence[int], classes: Sequence[str]):
        self.data, self.targets, self.classes = data, list(targets), list(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.data[index]), self.targets[index]


def read_cifar(batches: Sequence[Path], meta: Path, meta_key: str, label_key: str) -> CifarImages:
    """The images of ``batches`` (in order) with the classes of ``meta``, every file read by ``CifarUnpickler``."""
    classes = read_cifar_classes(meta, meta_key)
    parts = [read_cifar_batch(path, label_key, len(classes)) for path in batches]
    data = np.concatenate([pixels for pixels, _ in parts])
    return CifarImages(data, [y for _, labels in parts for y in labels], classes)
