"""Task loading: both on-disk layouts of all 12 tasks, the paper's split rules, and the error messages."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from fixtures_data import write_task
from PIL import Image

from transferbench.errors import TransferbenchError
from transferbench.tasks import check_data, detect_layout, get_task, list_tasks, load_split

TASKS = [t.name for t in list_tasks()]


def class_image(class_index: int, sample_index: int, rng: np.random.Generator) -> Image.Image:
    """A flat colour that encodes the class index (survives JPEG), so a label can be checked on its image."""
    return Image.new("RGB", (8, 8), (20 + (class_index % 16) * 14, 20 + (class_index // 16) * 7, 128))


def decode_class(img) -> int:
    r, g, _ = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, float).reshape(-1, 3).mean(0)
    return round((r - 20) / 14) + 16 * round((g - 20) / 7)


def test_all_twelve_tasks_have_cards_and_official_readers():
    from transferbench.tasks import official_readers

    assert len(TASKS) == 12
    # every reader serves a card: the 12 tasks' and the bias study's CelebA (tests/test_celeba.py)
    assert {get_task(t).official.reader for t in TASKS} | {"celeba"} == set(official_readers())


@pytest.mark.parametrize("layout", ["official", "folders"])
@pytest.mark.parametrize("name", TASKS)
def test_task_loads_with_all_classes_the_rule_sizes_and_correct_labels(name, layout, tmp_path):
    task = get_task(name)
    info = write_task(name, tmp_path, layout, image_fn=class_image)
    assert detect_layout(task, tmp_path) == (layout, info["root"])
    train, test = (load_split(name, split, tmp_path) for split in ("train", "test"))
    for split, size in ((train, info["train_size"]), (test, info["test_size"])):
        assert split.layout == layout
        assert len(split.classes) == info["num_classes"] == task.num_classes
        assert len(split) == len(split.dataset) == size
        assert all(0 <= y < task.num_classes for y in split.labels)
        assert split.paper_split == (name != "birds" or layout == "folders")
        assert split.root.is_relative_to(info["root"])
    assert train.classes == test.classes
    assert set(train.labels) == set(range(task.num_classes))
    # images decode, and each label is the class the image was written for
    for split in (train, test):
        for i in sorted({0, len(split) // 2, len(split) - 1}):
            img, label = split.dataset[i]
            assert isinstance(img, Image.Image | np.ndarray)
            assert type(label) is int and label == split.labels[i] == decode_class(img)


# The paper's split sizes for the default fixture (2 images per class and official part, 1 per class in test);
# computed by hand from each rule, so a reader that used the wrong official part would fail here.
OFFICIAL_SIZES = {
    "aircraft": (100 * (2 + 2), 100),  # trainval = train + val, not train alone (100 * 2)
    "dtd": (47 * (2 + 2), 47),  # train1 + val1 / test1; the fixture's partition 2 would give 141 / 94
    "flowers": (102 * (2 + 2), 102),  # train + val / test
    "sun397": (397 * 2, 397),  # Training_01 / Testing_01; the fixture's partition 02 is the other way round
    "caltech101": (2 * 30 + 99 * 2, 2 * 1),  # first 30 files per class; 2 classes hold 31 files
    "caltech256": (2 * 60 + 255 * 2, 2 * 1),  # first 60 files per class, 257.clutter included
    "cifar100": (100 * 2, 100),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_SIZES))
def test_official_layout_gives_the_papers_split(name, tmp_path):
    write_task(name, tmp_path, "official")
    sizes = tuple(len(load_split(name, split, tmp_path)) for split in ("train", "test"))
    assert sizes == OFFICIAL_SIZES[name]


@pytest.mark.parametrize(("name", "cutoff"), [("caltech101", 30), ("caltech256", 60)])
def test_caltech_train_is_the_first_files_by_number(name, cutoff, tmp_path):
    def image(class_index, sample_index, rng):  # blue marks files numbered above the cutoff
        return Image.new("RGB", (8, 8), (128, 128, 40 if sample_index < cutoff else 220))

    write_task(name, tmp_path, "official", image_fn=image)
    train, test = (load_split(name, split, tmp_path) for split in ("train", "test"))
    assert "BACKGROUND_Google" not in train.classes and len(train.classes) == get_task(name).num_classes
    if name == "caltech256":
        assert train.classes[-1] == "257.clutter"
    rich = [i for i, y in enumerate(train.labels) if y < 2]  # the classes with more files than the cutoff
    assert len(rich) == 2 * cutoff
    assert all(np.asarray(train.dataset[i][0].convert("RGB"))[..., 2].mean() < 100 for i in rich)
    assert sorted(test.labels) == [0, 1]
    assert all(np.asarray(test.dataset[i][0].convert("RGB"))[..., 2].mean() > 160 for i in range(len(test)))


def test_food101_folders_reads_its_test_split_from_valid(tmp_path):
    info = write_task("food101", tmp_path, "folders")
    assert (info["root"] / "valid").is_dir() and not (info["root"] / "test").exists()
    test = load_split("food101", "test", tmp_path)
    assert len(test) == 101 and test.root == info["root"]


def test_cifar_pickles_are_in_the_official_python2_format(tmp_path):
    info = write_task("cifar100", tmp_path, "official")
    with (info["root"] / "cifar-100-python" / "train").open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (200, 3072)
    assert len(batch[b"fine_labels"]) == 200 and len(batch[b"coarse_labels"]) == 200
    with (info["root"] / "cifar-100-python" / "meta").open("rb") as f:
        assert len(pickle.load(f, encoding="latin1")["fine_label_names"]) == 100


@pytest.mark.parametrize(("name", "checked_file"), [
    ("cifar10", "cifar-10-batches-py/data_batch_1"),
    ("cifar100", "cifar-100-python/train"),
    ("flowers", "flowers-102/imagelabels.mat"),
])
def test_md5_is_only_checked_when_asked(name, checked_file, tmp_path):
    # the fixture's files differ from the official ones, so their md5 sums differ too
    info = write_task(name, tmp_path, "official")
    assert len(load_split(name, "train", tmp_path)) == info["train_size"]
    with pytest.raises(TransferbenchError, match="md5") as err:
        load_split(name, "train", tmp_path, verify_md5=True)
    assert str(info["root"] / checked_file) in str(err.value)


def test_verify_md5_is_a_no_op_where_torchvision_has_no_md5(tmp_path):
    info = write_task("dtd", tmp_path, "official")
    assert len(load_split("dtd", "test", tmp_path, verify_md5=True)) == info["test_size"]


def test_missing_data_root_names_it(tmp_path):
    with pytest.raises(TransferbenchError, match="does not exist") as err:
        load_split("cifar10", "train", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_missing_dataset_names_the_marker(tmp_path):
    write_task("cifar10", tmp_path, "official")  # another task's data does not count
    with pytest.raises(TransferbenchError) as err:
        load_split("dtd", "train", tmp_path)
    assert str(tmp_path / "dtd" / "dtd/dtd/labels/train1.txt") in str(err.value)


@pytest.mark.parametrize(("name", "split", "missing"), [
    ("aircraft", "test", "fgvc-aircraft-2013b/data/images_variant_test.txt"),
    ("aircraft", "train", "fgvc-aircraft-2013b/data/variants.txt"),
    ("cars", "test", "stanford_cars/cars_test_annos_withlabels.mat"),
    ("cifar10", "test", "cifar-10-batches-py/test_batch"),
    ("cifar100", "train", "cifar-100-python/train"),
    ("dtd", "train", "dtd/dtd/labels/val1.txt"),
    ("flowers", "train", "flowers-102/setid.mat"),
    ("food101", "test", "food-101/meta/test.json"),
    ("pets", "test", "oxford-iiit-pet/annotations/test.txt"),
    ("sun397", "test", "SUN397/Partitions/Testing_01.txt"),
    ("birds", "test", "birdsnap/test_images.txt"),
    ("caltech101", "train", "caltech101/101_ObjectCategories/BACKGROUND_Google"),
])
def test_missing_official_file_names_it(name, split, missing, tmp_path):
    info = write_task(name, tmp_path, "official", train_per_class=1)
    path = info["root"] / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(TransferbenchError) as err:
        load_split(name, split, tmp_path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    if name == "sun397":
        assert "Partitions.zip" in message


@pytest.mark.parametrize(("name", "image"), [
    ("aircraft", "fgvc-aircraft-2013b/data/images/1000001.jpg"),
    ("sun397", "SUN397/a/ascene_000/sun_00000000.jpg"),
    ("caltech101", "caltech101/101_ObjectCategories/class_000/image_0005.jpg"),
])
def test_missing_images_are_reported_at_load_time(name, image, tmp_path):
    info = write_task(name, tmp_path, "official", train_per_class=1)
    (info["root"] / image).unlink()
    with pytest.raises(TransferbenchError, match="missing") as err:
        load_split(name, "train", tmp_path)
    assert str(info["root"] / image) in str(err.value)


def test_sun397_partitions_may_sit_beside_the_image_folder(tmp_path):
    info = write_task("sun397", tmp_path, "official", train_per_class=1)
    shutil.move(info["root"] / "SUN397" / "Partitions", info["root"] / "Partitions")
    assert len(load_split("sun397", "train", tmp_path)) == info["train_size"]


def test_birdsnap_images_may_sit_directly_in_the_release_folder_and_it_is_not_the_papers_split(tmp_path):
    info = write_task("birds", tmp_path, "official", train_per_class=1)
    base = info["root"] / "birdsnap"
    shutil.move(base / "download" / "images", base / "images")
    test = load_split("birds", "test", tmp_path)
    assert len(test) == info["test_size"] == 500 and not test.paper_split
    with pytest.raises(TransferbenchError):
        check_data("birds", tmp_path, strict=True)


@pytest.mark.parametrize("layout", ["official", "folders"])
def test_check_data_reports_and_strict_rejects_the_tiny_fixture(layout, tmp_path):
    info = write_task("pets", tmp_path, layout)
    report = check_data("pets", tmp_path)
    assert report == {"task": "pets", "layout": layout, "num_classes": 37,
                      "train_size": info["train_size"], "test_size": info["test_size"]}
    with pytest.raises(TransferbenchError, match="3680 / 3669"):
        check_data("pets", tmp_path, strict=True)
