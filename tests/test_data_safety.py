"""No code from data files, and data that would crash a run refused up front (issue #15, point 1).

A crafted CIFAR batch must not run its payload through `data check` or `run`; a genuine-format batch still loads to
the arrays plain pickle gives; out-of-range labels and decompression-bomb images are one-line errors naming the
file (exit 2, nothing written), in `data check` and in a run.
"""

from __future__ import annotations

import gc
import pickle
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from fixtures_data import write_py2_pickle, write_task
from fixtures_models import write_pruned_checkpoint
from PIL import Image

from transferbench.cli import main
from transferbench.errors import TransferbenchError
from transferbench.tasks import check_data, load_split
from transferbench.tasks.cifar import load_cifar_pickle

CIFAR10_DIR = "cifar-10-batches-py"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    write_task("cifar10", root / "official", "official", train_per_class=1, test_per_class=1)
    write_task("cifar10", root / "folders", "folders", train_per_class=1, test_per_class=1)
    write_pruned_checkpoint(root / "tiny_50.pth", sparsity=0.5)
    return root


def copy_of(world: Path, tmp_path: Path, layout: str) -> Path:
    shutil.copytree(world / layout, tmp_path / layout)
    return tmp_path / layout


def cli(capsys, *args) -> tuple[int, list[str]]:
    """Exit status and stderr lines (timestamped log lines dropped) of the CLI's own entry point."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if not line[:4].isdigit()]


def run_args(world: Path, data: Path, out: Path) -> list:
    return ["run", "--checkpoint", world / "tiny_50.pth", "--sparsity", "0.5", "--task", "cifar10", "--data-root", data,
            "--results", out, "--image-size", "32", "--epochs", "1", "--workers", "0"]


def assert_one_error_line(code: int, lines: list[str], *needles: str) -> None:
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_nothing_written(out: Path) -> None:
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())


# ------------------------------------------------------------------------------------ crafted CIFAR batches


class Payload:
    """Unpickling this calls exec, which creates ``marker``: the proof that a reader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def craft_batch(path: Path, marker: Path, protocol: int = 2) -> None:
    """A batch shaped like a genuine one, whose pixel array is the payload."""
    batch = {"batch_label": "batch 1", "labels": [0, 1], "data": Payload(marker), "filenames": ["a.png", "b.png"]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def test_the_crafted_batch_runs_its_payload_under_plain_pickle(tmp_path):
    """The payload is live: plain ``pickle.load`` (what the reader used before) creates the marker."""
    marker = tmp_path / "marker"
    craft_batch(tmp_path / "data_batch_1", marker)
    with (tmp_path / "data_batch_1").open("rb") as f:
        pickle.load(f, encoding="latin1")
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("crafted", ["data_batch_1", "batches.meta"])
def test_crafted_batch_runs_nothing_in_data_check_or_run(capsys, world, tmp_path, crafted, protocol):
    data = copy_of(world, tmp_path, "official")
    marker = tmp_path / "marker"
    craft_batch(data / "cifar10" / CIFAR10_DIR / crafted, marker, protocol)
    code, lines = cli(capsys, "data", "check", "--task", "cifar10", "--data-root", data)
    assert_one_error_line(code, lines, f"{CIFAR10_DIR}/{crafted}", "not a genuine CIFAR batch", "exec")
    code, lines = cli(capsys, *run_args(world, data, tmp_path / "out"))
    assert_one_error_line(code, lines, f"{CIFAR10_DIR}/{crafted}", "not a genuine CIFAR batch")
    assert not marker.exists()
    assert_nothing_written(tmp_path / "out")


def test_crafted_batch_through_the_installed_command(world, tmp_path):
    data = copy_of(world, tmp_path, "official")
    marker = tmp_path / "marker"
    craft_batch(data / "cifar10" / CIFAR10_DIR / "data_batch_1", marker)
    done = subprocess.run([sys.executable, "-m", "transferbench", "data", "check", "--task", "cifar10",
                           "--data-root", str(data)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("error: ")
    assert "data_batch_1 is not a genuine CIFAR batch" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize(("obj", "named"), [
    (np.float64(1.5), "numpy._core.multiarray.scalar"),  # a numpy scalar: harmless, but no genuine batch has one
    (b"\x00\x01", "_codecs.encode"),  # Python 3 bytes at protocol 2
    (Path("x"), "pathlib"),
    (print, "print"),  # __builtin__.print at protocol 2
])
def test_any_global_but_the_genuine_ones_is_refused_by_name(tmp_path, obj, named):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": obj}, protocol=2))
    with pytest.raises(TransferbenchError, match="not a genuine CIFAR batch") as err:
        load_cifar_pickle(path)
    assert named in str(err.value) and str(path) in str(err.value)


# ------------------------------------------------------------------------------------ genuine CIFAR batches


def plain_pickle_arrays(folder: Path, batches: list[str], label_key: str) -> tuple[np.ndarray, list[int]]:
    """What torchvision's CIFAR10 builds from the files with plain pickle (trusted here: the test wrote them)."""
    entries = []
    for name in batches:
        with (folder / name).open("rb") as f:
            entries.append(pickle.load(f, encoding="latin1"))
    data = np.vstack([e["data"] for e in entries]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return data, [y for e in entries for y in e[label_key]]


@pytest.mark.parametrize(("name", "folder", "splits", "label_key", "meta"), [
    ("cifar10", CIFAR10_DIR, {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
     "labels", ("batches.meta", "label_names")),
    ("cifar100", "cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels",
     ("meta", "fine_label_names")),
])
def test_genuine_format_batches_load_to_the_arrays_plain_pickle_gives(tmp_path, name, folder, splits, label_key,
                                                                      meta):
    base = write_task(name, tmp_path, "official", train_per_class=1, test_per_class=1)["root"] / folder
    with (base / meta[0]).open("rb") as f:
        classes = pickle.load(f, encoding="latin1")[meta[1]]
    for split, batches in splits.items():
        expected_data, expected_labels = plain_pickle_arrays(base, batches, label_key)
        loaded = load_split(name, split, tmp_path)
        assert np.array_equal(loaded.dataset.data, expected_data) and loaded.dataset.data.dtype == np.uint8
        assert loaded.labels == loaded.dataset.targets == expected_labels
        assert loaded.classes == classes
        img, label = loaded.dataset[3]
        assert np.array_equal(np.asarray(img), expected_data[3]) and label == expected_labels[3]


def test_batches_written_by_numpy_1_load_too(tmp_path):
    """The official files name ``numpy.core.multiarray._reconstruct`` (numpy 1); the fixture's numpy 2 writes
    ``numpy._core``. Respelled as in the official files, a batch loads to the same arrays, without a warning."""
    base = write_task("cifar10", tmp_path, "official", train_per_class=1, test_per_class=1)["root"] / CIFAR10_DIR
    path = base / "data_batch_1"
    before = load_cifar_pickle(path)
    raw = path.read_bytes()
    assert raw.count(b"cnumpy._core.multiarray\n_reconstruct\n") == 1
    path.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = load_cifar_pickle(path)
    assert np.array_equal(after["data"], before["data"]) and after["labels"] == before["labels"]


def rewrite_batch(path: Path, **changes) -> None:
    write_py2_pickle(path, {**load_cifar_pickle(path), **changes})


@pytest.mark.parametrize(("changes", "needle"), [
    ({"data": np.zeros((2, 3072), np.float32)}, "float32"),
    ({"data": np.zeros((2, 1024), np.uint8)}, "(2, 1024)"),
    ({"labels": [0]}, "list of 2 integer labels"),
    ({"labels": [0, 1.0]}, "list of 2 integer labels"),
    ({"labels": None}, "'labels'"),
])
def test_malformed_batch_is_an_error_naming_the_file(tmp_path, changes, needle):
    base = write_task("cifar10", tmp_path, "official", train_per_class=1, test_per_class=1)["root"] / CIFAR10_DIR
    rewrite_batch(base / "data_batch_2", **changes)
    with pytest.raises(TransferbenchError) as err:
        load_split("cifar10", "train", tmp_path)
    assert str(base / "data_batch_2") in str(err.value) and needle in str(err.value)


# ---------------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("bad_label", [10, -1])
def test_cifar_label_out_of_range_fails_data_check_and_run(capsys, world, tmp_path, bad_label):
    data = copy_of(world, tmp_path, "official")
    batch = data / "cifar10" / CIFAR10_DIR / "data_batch_1"
    rewrite_batch(batch, labels=[0, bad_label])
    code, lines = cli(capsys, "data", "check", "--task", "cifar10", "--data-root", data)
    assert_one_error_line(code, lines, str(batch), f"label {bad_label} of image 1", "10 classes")
    code, lines = cli(capsys, *run_args(world, data, tmp_path / "out"))
    assert_one_error_line(code, lines, str(batch), f"label {bad_label} of image 1")
    assert_nothing_written(tmp_path / "out")


def test_cifar100_fine_label_out_of_range(tmp_path):
    base = write_task("cifar100", tmp_path, "official", train_per_class=1, test_per_class=1)["root"]
    path = base / "cifar-100-python" / "test"
    labels = load_cifar_pickle(path)["fine_labels"]
    rewrite_batch(path, fine_labels=[*labels[:-1], 100])
    with pytest.raises(TransferbenchError, match=f"label 100 of image {len(labels) - 1} is outside the 100") as err:
        check_data("cifar100", tmp_path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("one_based", [0, 103])  # 0-based -1 and 102: both outside flowers' 102 classes
def test_flowers_label_out_of_range_names_the_label_file(tmp_path, one_based):
    base = write_task("flowers", tmp_path, "official", train_per_class=1, test_per_class=1)["root"] / "flowers-102"
    labels = scipy.io.loadmat(base / "imagelabels.mat")["labels"]
    labels[0, 0] = one_based  # image 1: the first of the train part
    scipy.io.savemat(base / "imagelabels.mat", {"labels": labels.astype(np.int16)})
    with pytest.raises(TransferbenchError) as err:
        check_data("flowers", tmp_path)
    message = str(err.value)
    assert str(base / "imagelabels.mat") in message and f"label {one_based - 1} of image 0" in message


def test_cars_label_out_of_range_names_the_annotation_file(tmp_path):
    base = write_task("cars", tmp_path, "official", train_per_class=1, test_per_class=1)["root"] / "stanford_cars"
    annos_path = base / "cars_test_annos_withlabels.mat"
    annos = scipy.io.loadmat(annos_path)["annotations"]
    annos["class"][0, 2] = np.array([[0]], dtype=np.uint8)  # 1-based in the file: 0 is no class
    scipy.io.savemat(annos_path, {"annotations": annos})
    with pytest.raises(TransferbenchError) as err:
        load_split("cars", "test", tmp_path)
    assert str(annos_path) in str(err.value) and "label -1 of image 2" in str(err.value)


# ------------------------------------------------------------------------------------------- image files


def declared_png(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` pixels (1-bit grey)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


# PIL's own reaction to each: an error beyond twice MAX_IMAGE_PIXELS (89,478,485), only a warning between
BOMBS = {"error": (20_000, 20_000), "warning": (10_000, 10_000)}


def test_the_bombs_are_bombs_to_pil(tmp_path):
    assert Image.MAX_IMAGE_PIXELS == 89_478_485
    with pytest.raises(Image.DecompressionBombError):
        Image.open(declared_png(tmp_path / "error.png", *BOMBS["error"]))
    with pytest.warns(Image.DecompressionBombWarning), Image.open(declared_png(tmp_path / "w.png", *BOMBS["warning"])):
        pass


def plant(data: Path, split: str, name: str, png: bytes) -> Path:
    """Put ``png`` into the first class folder of ``split`` of the folders layout, as one more image."""
    class_dir = sorted((data / "cifar10" / split).iterdir())[0]
    (class_dir / name).write_bytes(png)
    return class_dir / name


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_decompression_bomb_fails_data_check(capsys, world, tmp_path, kind):
    data = copy_of(world, tmp_path, "folders")
    bomb = plant(data, "test", "bomb.png", declared_png(tmp_path / "b.png", *BOMBS[kind]).read_bytes())
    code, lines = cli(capsys, "data", "check", "--task", "cifar10", "--data-root", data)
    assert_one_error_line(code, lines, f"image {bomb} is too large to decode", "possible decompression bomb")


@pytest.mark.parametrize("workers", [0, 2])
def test_decompression_bomb_fails_a_run_with_one_line(capsys, world, tmp_path, workers):
    """The warning-level bomb (PIL alone would go on to decode 100 M pixels), read in the main process or in
    DataLoader workers."""
    data = copy_of(world, tmp_path, "folders")
    bomb = plant(data, "train", "bomb.png", declared_png(tmp_path / "b.png", *BOMBS["warning"]).read_bytes())
    args = run_args(world, data, tmp_path / "out")
    args[args.index("--workers") + 1] = workers
    code, lines = cli(capsys, *args)
    assert_one_error_line(code, lines, f"image {bomb} is too large to decode")
    assert_nothing_written(tmp_path / "out")
    gc.collect()  # the failed loader's workers are joined here (about 5 s), not in whichever test runs next


def test_bomb_in_an_official_layout_is_refused_when_decoded(tmp_path):
    """The image-file official layouts decode through the same guarded open as the folders layout."""
    base = write_task("dtd", tmp_path, "official", train_per_class=1, test_per_class=1)["root"]
    test = load_split("dtd", "test", tmp_path)
    bomb = test.dataset.samples[5][0]
    declared_png(bomb, *BOMBS["warning"])  # a PNG behind a .jpg name: PIL goes by the content
    assert bomb.is_relative_to(base)
    with pytest.raises(TransferbenchError, match="too large to decode") as err:
        test.dataset[5]
    assert str(bomb) in str(err.value)
    with pytest.raises(TransferbenchError, match="too large to decode"):
        check_data("dtd", tmp_path)


@pytest.mark.parametrize(("content", "needle"), [(b"", "cannot read image"), (b"not an image", "cannot read image")])
def test_unreadable_image_fails_data_check(world, tmp_path, content, needle):
    data = copy_of(world, tmp_path, "folders")
    broken = plant(data, "train", "broken.png", content)
    with pytest.raises(TransferbenchError, match=needle) as err:
        check_data("cifar10", data)
    assert str(broken) in str(err.value)


def test_imagenet_upstream_reads_pil_loaders_pixels_and_refuses_a_bomb(tmp_path):
    from torchvision.datasets.folder import pil_loader

    from transferbench.upstream.datasets import upstream_datasets

    for split in ("train", "val"):
        for c, mode in enumerate(("RGB", "L", "P")):  # grey and palette files become RGB, as pil_loader makes them
            folder = tmp_path / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            pixels = np.random.default_rng(c).integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(folder / "0.png")
    recipe = {"dataset": "imagenet", "image_size": 8}
    train, _ = upstream_datasets(recipe, tmp_path)
    folder = train.dataset  # Transformed(ImageFolder)
    for path, _ in folder.samples:
        assert np.array_equal(np.asarray(folder.loader(path)), np.asarray(pil_loader(path)))
    bomb = declared_png(Path(folder.samples[1][0]), *BOMBS["error"])
    with pytest.raises(TransferbenchError, match="too large to decode") as err:
        train[1]
    assert str(bomb) in str(err.value)
