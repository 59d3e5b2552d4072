"""CelebA as a task (issue #18): the official layout against torchvision's reader, the attribute and backdoor
variants, the validation split, and the procedural ``faces`` mini-task."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from fixtures_celeba import ATTRIBUTE_NAMES, write_celeba
from PIL import Image
from torchvision.datasets import CelebA

from transferbench.cli import main
from transferbench.errors import TransferbenchError
from transferbench.synthetic import FACE_ATTRIBUTES, make_faces
from transferbench.tasks import Split, Transformed, check_data, get_task, list_tasks, load_split
from transferbench.tasks.limit import take
from transferbench.transforms import TransformConfig, build_transform, pixel_transform

SPLITS = {"train": ("train", 0), "validation": ("valid", 1), "test": ("test", 2)}  # ours: (torchvision's, partition)


class TorchvisionCelebA(CelebA):
    """torchvision's reader as the reference; the fixture's list files are not the release's, so their md5 sums
    (which torchvision checks on every load) differ: only that check is skipped."""

    def _check_integrity(self) -> bool:
        return os.path.isdir(os.path.join(self.root, self.base_folder, "img_align_celeba"))


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    data_root = tmp_path_factory.mktemp("data")
    return data_root, write_celeba(data_root)


def _one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)


# ------------------------------------------------------------------------------------------ the official layout


@pytest.mark.parametrize("split", list(SPLITS))
def test_reader_equals_torchvision_on_the_official_files(celeba, split):
    data_root, fixture = celeba
    ours = load_split("celeba", split, data_root)
    reference = TorchvisionCelebA(str(data_root), split=SPLITS[split][0], target_type="attr")
    files, attributes = fixture.split(SPLITS[split][1])
    assert len(ours) == len(ours.dataset) == len(reference) == len(files) >= 2
    assert ours.ids == list(reference.filename) == files
    assert ours.attribute_names == reference.attr_names == ATTRIBUTE_NAMES
    np.testing.assert_array_equal(ours.attributes, reference.attr.numpy())
    np.testing.assert_array_equal(ours.attributes, attributes)
    assert ours.attributes.dtype == np.int8 and ours.labels.dtype == np.int64
    np.testing.assert_array_equal(ours.labels, attributes)
    assert ours.targets == "multilabel" and ours.classes == ATTRIBUTE_NAMES and ours.backdoored is None
    assert ours.layout == "official" and ours.root == fixture.root
    for i in (0, len(ours) - 1):
        img, target = ours.dataset[i]
        ref_img, ref_target = reference[i]
        assert isinstance(img, Image.Image) and target.dtype == torch.float32 and target.shape == (40,)
        np.testing.assert_array_equal(target.numpy(), ref_target.numpy())
        np.testing.assert_array_equal(np.asarray(img), np.asarray(ref_img))


def test_card_and_listing(capsys):
    card = get_task("celeba")
    assert card.kind == "bias" and card.num_classes == 40 and card.extra["targets"] == "multilabel"
    assert card.extra["attribute_names"] == ATTRIBUTE_NAMES
    assert (card.train_size, card.extra["validation_size"], card.test_size) == (162770, 19867, 19962)
    assert card.normalization.mean == card.normalization.std == (0.5, 0.5, 0.5) and card.full_lr == 0.001
    assert card.extra["identity_attributes"] == ["Male", "Young", "Chubby", "Pale_Skin"]
    assert "celeba" not in {t.name for t in list_tasks()} and len(list_tasks()) == 12  # not a paper task
    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    assert "bias-study tasks" in out and "celeba-<attribute>" in out
    assert out.index("celeba ") > out.index("bias-study tasks")
    assert main(["tasks", "show", "celeba-blond_hair-grayscale"]) == 0
    shown = capsys.readouterr().out
    assert "attribute: Blond_Hair" in shown and "backdoor: grayscale" in shown


def test_check_data_reports_the_three_splits(celeba, capsys):
    data_root, fixture = celeba
    sizes = {f"{name}_size": int((fixture.partition == part).sum()) for name, (_, part) in SPLITS.items()}
    assert check_data("celeba", data_root) == {"task": "celeba", "layout": "official", "num_classes": 40, **sizes}
    assert main(["data", "check", "--task", "celeba-smiling", "--data-root", str(data_root)]) == 0
    assert json.loads(capsys.readouterr().out) == {"task": "celeba-smiling", "layout": "official",
                                                    "num_classes": 1, **sizes}
    with pytest.raises(TransferbenchError) as err:
        check_data("celeba", data_root, strict=True)
    _one_line(err, "19867")


# ------------------------------------------------------------------------------------------------- variants


def test_single_attribute_variant_is_one_output(celeba):
    data_root, fixture = celeba
    task = get_task("celeba-blond_hair")
    assert (task.name, task.num_classes, task.kind) == ("celeba-blond_hair", 1, "bias")
    assert task.extra["attribute"] == "Blond_Hair" and "backdoor" not in task.extra
    test = load_split(task, "test", data_root)
    _, attributes = fixture.split(2)
    blond = ATTRIBUTE_NAMES.index("Blond_Hair")
    assert test.classes == ["Blond_Hair"] and test.labels.shape == (len(attributes), 1)
    np.testing.assert_array_equal(test.labels[:, 0], attributes[:, blond])
    np.testing.assert_array_equal(test.attributes, attributes)  # every attribute stays, for the bias metrics
    _, target = test.dataset[1]
    assert target.dtype == torch.float32 and target.tolist() == [float(attributes[1, blond])]
    assert test.backdoored is None and test.targets == "multilabel"


@pytest.mark.parametrize("kind", ["grayscale", "yellow_square"])
def test_backdoor_fractions_are_exact_and_the_same_images_every_load(celeba, kind):
    data_root, _ = celeba
    name = f"celeba-big_nose-{kind}"
    for split, fractions in (("train", (0.35, 0.65)), ("validation", (0.5, 0.5)), ("test", (0.5, 0.5))):
        torch.manual_seed(1), np.random.seed(1)  # the choice depends on no global RNG
        first = load_split(name, split, data_root)
        torch.manual_seed(2), np.random.seed(2)
        again = load_split(name, split, data_root)
        target = first.labels[:, 0]
        for value, fraction in zip((0, 1), fractions, strict=True):
            members = target == value
            assert first.backdoored[members].sum() == round(fraction * members.sum())
        assert first.backdoored.dtype == bool and len(first.backdoored) == len(first)
        chosen = [first.ids[i] for i in np.flatnonzero(first.backdoored)]
        assert chosen == [again.ids[i] for i in np.flatnonzero(again.backdoored)]


def test_backdoor_choice_is_fixed_per_split_attribute_and_type(tmp_path):
    write_celeba(tmp_path, n=400, seed=3)  # enough images that two independent draws differ
    masks = {name: load_split(name, "train", tmp_path).backdoored
             for name in ("celeba-smiling-grayscale", "celeba-smiling-yellow_square", "celeba-attractive-grayscale")}
    assert len({m.tobytes() for m in masks.values()}) == 3


def _is_grey(img: Image.Image) -> bool:
    pixels = np.asarray(img.convert("RGB")).astype(int)
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def test_grayscale_cue_is_on_exactly_the_backdoored_images(celeba):
    data_root, _ = celeba
    train = load_split("celeba-blond_hair-grayscale", "train", data_root)
    assert 0 < train.backdoored.sum() < len(train)
    for i in range(len(train)):
        assert _is_grey(train.dataset[i][0]) == bool(train.backdoored[i])


@pytest.mark.parametrize("augment", [False, True])
def test_yellow_square_is_in_the_top_left_corner_of_what_the_model_sees(celeba, augment):
    data_root, _ = celeba
    train = load_split("celeba-smiling-yellow_square", "train", data_root)
    assert 0 < train.backdoored.sum() < len(train)
    cfg = TransformConfig(image_size=32, resize_size=37, augment=augment)
    side = round((0.02 * 32 * 32) ** 0.5)  # 5 px: 2% of the 32x32 input
    pixels = Transformed(train.dataset, pixel_transform(cfg))
    for i in range(len(train)):
        corner = pixels[i][0][:, :side, :side].permute(1, 2, 0).reshape(-1, 3)
        yellow = bool((corner == torch.tensor([255, 255, 0], dtype=torch.uint8)).all())
        assert yellow == bool(train.backdoored[i])
        if yellow:  # only the square: the pixels beside it are the image's
            assert not (pixels[i][0][:, side, side] == torch.tensor([255, 255, 0], dtype=torch.uint8)).all()
    # the float path draws the same square: ToTensor + Normalize of (255, 255, 0)
    marked = int(np.flatnonzero(train.backdoored)[0])
    floats = Transformed(train.dataset, build_transform(cfg))[marked][0]
    expected = (torch.tensor([1.0, 1.0, 0.0]) - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    torch.testing.assert_close(floats[:, 0, 0], expected)
    # a subset (--limit, a low-data draw) keeps each image's square
    subset = take(train, [marked, int(np.flatnonzero(~train.backdoored)[0])])
    assert subset.backdoored.tolist() == [True, False]
    corners = [Transformed(subset.dataset, pixel_transform(cfg))[j][0][:, 0, 0].tolist() for j in (0, 1)]
    assert corners[0] == [255, 255, 0] and corners[1] != [255, 255, 0]


# --------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["celeba-no_such_attribute", "celeba-blond_hair-purple", "celeba-mustache-grayscale",
                                  "celeba-smiling-grayscale-extra"])
def test_unknown_attribute_or_backdoor_is_one_line_with_the_choices(name):
    with pytest.raises(TransferbenchError) as err:
        get_task(name)
    choices = {"celeba-no_such_attribute": "blond_hair", "celeba-blond_hair-purple": "yellow_square",
               "celeba-mustache-grayscale": "celeba-big_nose-grayscale", "celeba-smiling-grayscale-extra": "smiling"}
    _one_line(err, name, choices[name])


@pytest.mark.parametrize("missing", ["list_attr_celeba.txt", "img_align_celeba", "list_eval_partition.txt"])
def test_a_missing_file_is_named_with_the_layout(tmp_path, missing):
    fixture = write_celeba(tmp_path, n=20)
    path = fixture.root / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(TransferbenchError) as err:
        load_split("celeba", "train", tmp_path)
    _one_line(err, str(path), "list_attr_celeba.txt, list_eval_partition.txt")


def test_a_corrupt_attribute_value_names_its_line(tmp_path):
    fixture = write_celeba(tmp_path, n=20)
    path = fixture.root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4][:-2] + " 0"  # the 3rd image's Young
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TransferbenchError) as err:
        load_split("celeba", "test", tmp_path)
    _one_line(err, f"{path} line 5", "Young", "'0'")


def test_md5_of_the_list_files_only_when_asked(celeba):
    data_root, fixture = celeba  # the fixture's list files are not the release's: their md5 sums differ
    with pytest.raises(TransferbenchError) as err:
        load_split("celeba", "test", data_root, verify_md5=True)
    _one_line(err, str(fixture.root / "list_eval_partition.txt"), "md5")


def test_validation_split_only_where_the_card_has_one(tmp_path):
    with pytest.raises(TransferbenchError) as err:
        load_split("digits", "validation", None)
    _one_line(err, "digits has no validation split", "--validation-size")
    with pytest.raises(ValueError):
        load_split("digits", "val", None)


def test_multilabel_labels_are_checked():
    def split(labels, classes):
        return Split(dataset=None, labels=labels, classes=classes, layout="official", root=None,  # type: ignore
                     label_source="attrs.txt", targets="multilabel")  # type: ignore[arg-type]

    split(np.array([[0, 1], [1, 1]]), ["a", "b"]).check_labels()
    with pytest.raises(TransferbenchError) as err:
        split(np.array([[0, 1], [1, 2]]), ["a", "b"]).check_labels()
    _one_line(err, "attrs.txt", "value 2 of image 1 for b")
    with pytest.raises(TransferbenchError) as err:
        split(np.array([[0, 1, 1]]), ["a", "b"]).check_labels()
    _one_line(err, "attrs.txt", "2 values per image")
    assert len(split(np.zeros((3, 2), np.int64), ["a", "b"])) == 3


# ------------------------------------------------------------------------------------- the faces mini-task


def test_faces_splits_and_fields():
    card = get_task("faces")
    assert card.kind == "mini" and card.extra["identity_attributes"] == ["Male", "Young"]
    for split, size in (("train", 2000), ("validation", 500), ("test", 1000)):
        data = load_split("faces", split, None)
        assert len(data) == len(data.dataset) == size
        assert data.targets == "multilabel" and data.classes == data.attribute_names == card.extra["attribute_names"]
        assert data.labels.shape == data.attributes.shape == (size, 8) and data.labels.dtype == np.int64
        assert data.attributes.dtype == np.int8 and len(set(data.ids)) == size
        img, target = data.dataset[0]
        assert np.asarray(img).shape == (32, 32, 3) and target.dtype == torch.float32
        assert target.tolist() == data.labels[0].tolist()
    assert load_split("faces", "train", None).ids != load_split("faces", "test", None).ids
    smiling = load_split("faces-smiling", "test", None)
    assert smiling.classes == ["Smiling"] and smiling.labels.shape == (1000, 1)


def _faces(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The generated images [N, 32, 32, 3] and attributes of a faces split (generated once per process)."""
    data = load_split("faces", split, None)
    return np.stack([np.asarray(data.dataset[i][0]) for i in range(len(data))]), data.attributes


def test_faces_attribute_rates_follow_their_construction():
    """P(attribute | Male) estimated on the 3,500 faces of the three splits, within 4 standard errors of the
    construction."""
    attributes = np.concatenate([load_split("faces", split, None).attributes for split in SPLITS])
    male = attributes[:, 0] == 1
    assert abs(male.mean() - 0.5) < 0.035
    for column, (female_rate, male_rate) in list(enumerate(FACE_ATTRIBUTES.values()))[1:]:
        for group, rate in ((~male, female_rate), (male, male_rate)):
            estimate = attributes[group, column].mean()
            assert abs(estimate - rate) <= 4 * np.sqrt(rate * (1 - rate) / group.sum()) + 1e-9, column
    correlated = [name for name, (f, m) in FACE_ATTRIBUTES.items() if name != "Male" and abs(f - m) >= 0.2]
    assert len(correlated) >= 3  # several targets depend on Male by construction
    rare = [name for name, (f, m) in FACE_ATTRIBUTES.items() if (f + m) / 2 <= 0.12]
    assert len(rare) >= 2
    # the generator is deterministic from its seed
    first, again, other = make_faces(20, seed=4), make_faces(20, seed=4), make_faces(20, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_faces_attributes_are_drawn_into_the_images():
    """A linear model (ridge regression, closed form) on the 2x2-pooled pixels of the train faces separates the
    obvious attributes almost perfectly and the subtle ones (a smile's corners, a pixel more of nose) above chance
    but not perfectly, on the test faces: every attribute is in its image, some hard to see."""
    from sklearn.metrics import roc_auc_score

    def features(images):
        pooled = images.astype(np.float64).reshape(len(images), 16, 2, 16, 2, 3).mean(axis=(2, 4)) / 255
        return np.hstack([pooled.reshape(len(images), -1), np.ones((len(images), 1))])

    (train_images, train_attributes), (test_images, test_attributes) = _faces("train"), _faces("test")
    x = features(train_images)
    weights = np.linalg.solve(x.T @ x + 10 * np.eye(x.shape[1]), x.T @ (train_attributes - 0.5))
    scores = features(test_images) @ weights
    auc = {name: roc_auc_score(test_attributes[:, j], scores[:, j]) for j, name in enumerate(FACE_ATTRIBUTES)}
    assert all(auc[name] > 0.95 for name in ("Male", "Blond_Hair", "Eyeglasses", "Heavy_Makeup")), auc
    assert all(0.65 < auc[name] < 0.95 for name in ("Smiling", "Big_Nose")), auc
    assert all(value > 0.65 for value in auc.values()), auc
