"""`transferbench upstream --from NAME|PATH`: one-shot candidates of a published dense (CrAM) model, calibrated on a
class-balanced sample, registered, and found by `run` through the registry's one-shot rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder

from transferbench.checkpoints import CheckpointSpec, load_registered, register_local, resolve_checkpoint
from transferbench.checkpoints.registry import find_checkpoint, named_checkpoint, prepared_candidate
from transferbench.checkpoints.resolve import prepare_command
from transferbench.cli import main
from transferbench.digests import sha256_file
from transferbench.errors import TransferbenchError
from transferbench.models import create_model
from transferbench.pruning.bn import balanced_sample, dataset_labels, indices_digest
from transferbench.upstream import load_recipe, oneshot_rows_missing, prepare_oneshot_rows, prune_published
from transferbench.upstream.from_dense import oneshot_name, oneshot_names

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 6, 2
CALIBRATION = {"size": 8, "seed": 42, "batches": 3, "batch_size": 4}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    return tmp_path / "ckpts"


@pytest.fixture
def imagenet(tmp_path):
    """An ImageNet-layout folder (train/<wnid>/, val/<wnid>/): listed class by class, so any prefix of the
    training set is one or two classes."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c in range(CLASSES):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(60 * c + rng.normal(0, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def recipe(tmp_path):
    rec = load_recipe("small_cpu")
    rec.update(name="tiny_imagenet", dataset="imagenet", image_size=16, calibration=CALIBRATION)
    path = tmp_path / "tiny_imagenet.yaml"
    path.write_text(yaml.safe_dump(rec))
    return path


def write_cram_file(path, seed: int = 0, num_classes: int = CLASSES) -> nn.Module:
    """A dense model in CrAM's own checkpoint layout (its utils/checkpoints.py: epoch, model_config, a DataParallel
    state dict, optimizer and scheduler state), with BN statistics that a recalibration must replace."""
    torch.manual_seed(seed)
    model = create_model("resnet_tiny", num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 99, "model_config": {"arch": "resnet_tiny", "dataset": "imagenet"},
                "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state_dict": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0]}]}},
                "lr_scheduler": {"state_dict": {"last_epoch": 99}}}, path)
    return model


def register_published(home, name: str = "tiny_cram", method: str = "cram", sparsities=(0.5, 0.9), **kw):
    """A dense source row and its one-shot rows, as the shipped table has them for CrAM, in a local registry."""
    dense = home / f"{name}.pth"
    model = write_cram_file(dense, **kw)
    register_local(CheckpointSpec(name, method, 0.0, "resnet_tiny"), dense)
    rows = [register_local(CheckpointSpec(f"{name}_{round(s * 100)}", method, s, "resnet_tiny", oneshot=True,
                                          oneshot_from=name), dense) for s in sparsities]
    return dense, model, rows


def upstream(*args: str) -> int:
    return main(["upstream", *args])


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def test_candidates_of_a_registered_dense_row(home, imagenet, recipe, capsys):
    dense_path, dense, rows = register_published(home)
    assert upstream("--method", "cram", "--from", "tiny_cram", "--sparsity", "0.5", "0.9", "--recipe", str(recipe),
                    "--data-root", str(imagenet)) == 0
    assert "transferbench run --method cram" in capsys.readouterr().out
    digest = sha256_file(dense_path)
    train_labels = np.array(ImageFolder(imagenet / "train").targets)
    sample = balanced_sample(train_labels, CALIBRATION["size"], CALIBRATION["seed"])
    assert list(np.bincount(train_labels[sample], minlength=CLASSES)) == [2, 2, 2, 2]  # every class, evenly
    assert set(train_labels[:CALIBRATION["size"]]) == {0, 1}  # where a prefix of the training set would come from
    dense_weights = weights(dense)
    magnitudes = torch.cat([w.abs().flatten() for w in dense_weights.values()])
    for row in rows:
        candidate = prepared_candidate(row)
        assert candidate is not None and candidate.pruned_from == f"tiny_cram@sha256:{digest}"
        assert candidate.name == f"tiny_cram_cram_{round(row.sparsity * 100)}_oneshot_tiny_imagenet_s42"
        loaded = load_registered(candidate)  # its own sha256 and the registered sparsity, checked
        n = magnitudes.numel()
        assert loaded.sparsity.overall == pytest.approx(row.sparsity, abs=1 / n)
        # global magnitude: exactly the weights above the n·s-th smallest |w| over every conv and linear layer survive
        threshold = magnitudes.kthvalue(int(np.floor(row.sparsity * n))).values
        for name, weight in weights(loaded.model).items():
            kept = dense_weights[name].abs() > threshold
            assert torch.equal(weight != 0, kept), name
            assert torch.equal(weight[kept], dense_weights[name][kept]), name  # survivors keep their values
        bn = [(m, d) for m, d in zip(loaded.model.modules(), dense.modules(), strict=True)
              if isinstance(m, nn.BatchNorm2d)]
        assert bn and all(not torch.allclose(m.running_mean, d.running_mean) for m, d in bn)
        assert all(int(m.num_batches_tracked) == CALIBRATION["batches"] for m, _ in bn)
        meta = torch.load(candidate.path, weights_only=True)["metadata"]
        assert meta["calibration"] == {"size": 8, "seed": 42, "batches": 3, "sampling": "class-balanced",
                                       "indices_sha256": indices_digest(sample)}
        assert meta["oneshot"] is True and meta["oneshot_pruning"] == "global magnitude"
        assert meta["source"] == {"row": "tiny_cram", "path": str(dense_path.resolve()), "sha256": digest,
                                  "format": "ist"}
        assert meta["upstream_top1"] == pytest.approx(candidate.upstream_top1 / 100, abs=5e-5)


def test_oneshot_names_follow_the_row_method_sparsity_recipe_and_calibration_seed():
    # without a calibration: block the sample is CrAM's (seed 42); the recipe's own seed otherwise
    assert oneshot_names("cram_resnet50", "cram", [0.5, 0.975], {"name": "imagenet_resnet50"}) == [
        "cram_resnet50_cram_50_oneshot_imagenet_resnet50_s42", "cram_resnet50_cram_97.5_oneshot_imagenet_resnet50_s42"]
    seeded = {"name": "r", "calibration": {"seed": 7}}
    assert oneshot_names("d", "cram_nm", [0.5], seeded) == ["d_cram_nm_50_oneshot_r_s7"]
    # several sparsities name their group (a sweep unit), one names a candidate
    assert oneshot_name("d", "cram", [0.5, 0.9], "r", 7) == "d_cram_50-90_oneshot_r_s7"
    assert oneshot_name("d", "cram", [0.9], "r", 7) == oneshot_names("d", "cram", [0.9], seeded)[0]


def test_run_resolves_a_one_shot_row_to_its_candidate_or_names_the_command(home, imagenet, recipe):
    _, _, rows = register_published(home)
    assert oneshot_rows_missing([*rows, named_checkpoint("tiny_cram")]) == rows
    with pytest.raises(TransferbenchError) as err:
        resolve_checkpoint("cram", 0.9, "resnet_tiny", None)
    message = str(err.value)
    assert "`transferbench upstream --method cram --from tiny_cram --sparsity 0.9 --dataset imagenet" in message
    assert "\n" not in message

    [result] = prune_published("tiny_cram", "cram", [0.9], recipe=recipe, data_root=imagenet)
    assert oneshot_rows_missing(rows) == [rows[0]]
    ref = resolve_checkpoint("cram", 0.9, "resnet_tiny", None)
    assert ref.path == str(result.path) and ref.sparsity == 0.9 and ref.method == "cram"
    assert ref.identity == f"{result.spec.name}@sha256:{sha256_file(result.path)}"  # the candidate's own file
    # a candidate whose file is gone is not a candidate: the sweep's stage prepares it again
    result.path.unlink()
    assert oneshot_rows_missing(rows) == rows
    with pytest.raises(TransferbenchError, match="no longer exists"):
        resolve_checkpoint("cram", 0.9, "resnet_tiny", None)


def test_a_candidate_depends_on_its_sparsity_and_sample_only(home, imagenet, recipe, tmp_path):
    register_published(home)
    [alone] = prune_published("tiny_cram", "cram", [0.9], recipe=recipe, data_root=imagenet, out_dir=tmp_path / "a")
    first = load_registered(alone.spec).model.state_dict()
    together = prune_published("tiny_cram", "cram", [0.5, 0.9], recipe=recipe, data_root=imagenet,
                               out_dir=tmp_path / "b")
    second = load_registered(together[1].spec).model.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_cram_nm_candidates_are_2_of_4(home, imagenet, recipe):
    _, dense, [row] = register_published(home, "tiny_cram_nm", "cram_nm", (0.5,))
    assert upstream("--method", "cram_nm", "--from", "tiny_cram_nm", "--sparsity", "0.5", "--recipe", str(recipe),
                    "--data-root", str(imagenet)) == 0
    loaded = load_registered(resolve_spec_row(row))
    assert loaded.sparsity.overall == 0.5
    for name, weight in weights(loaded.model).items():
        # groups of 4 consecutive input channels at one (output, kernel position); a linear row in fours
        groups = (weight.permute(0, 2, 3, 1) if weight.dim() == 4 else weight).reshape(-1, 4)
        assert bool(((groups == 0).sum(1) >= 2).all()), name
        kept = groups != 0
        dense_groups = (weights(dense)[name].permute(0, 2, 3, 1) if weight.dim() == 4
                        else weights(dense)[name]).reshape(-1, 4).abs()
        # the two kept are the two largest of their group
        assert torch.equal(kept, dense_groups >= dense_groups.sort(1).values[:, 2:3]), name
    meta = torch.load(loaded.path, weights_only=True)["metadata"]
    assert meta["oneshot_pruning"] == "2:4" and meta["target_sparsity"] == 0.5


def resolve_spec_row(row: CheckpointSpec) -> CheckpointSpec:
    ref = resolve_checkpoint(row.method, row.sparsity, row.arch, None)
    return named_checkpoint(ref.identity.partition("@")[0])


def test_a_file_by_path_and_the_row_with_its_sha256(home, imagenet, recipe, tmp_path):
    path = tmp_path / "elsewhere" / "dense.pth"
    write_cram_file(path)
    assert upstream("--method", "cram", "--from", str(path), "--sparsity", "0.9", "--recipe", str(recipe),
                    "--data-root", str(imagenet)) == 0
    digest = sha256_file(path)
    candidate = find_checkpoint("cram", 0.9, "resnet_tiny")
    assert candidate.pruned_from == f"sha256:{digest}" and candidate.name.startswith(f"dense_{digest[:8]}_cram_90")
    # a published row with that file's sha256 is prepared by it, whatever name the file was given
    published = home / "published.pth"
    published.write_bytes(path.read_bytes())
    register_local(CheckpointSpec("pub", "cram", 0.0, "resnet_tiny", sha256=digest), published)
    row = register_local(CheckpointSpec("pub_90", "cram", 0.9, "resnet_tiny", oneshot=True, oneshot_from="pub"),
                         published)
    assert prepared_candidate(row) == candidate and oneshot_rows_missing([row]) == []


def test_a_sweep_prepares_its_rows_with_one_load_per_dense_file(home, imagenet, recipe, monkeypatch):
    _, _, rows = register_published(home)
    _, _, nm_rows = register_published(home, "tiny_cram_nm", "cram_nm", (0.5,), seed=1)
    import transferbench.upstream.from_dense as from_dense

    loads = []
    real = from_dense.load_registered
    monkeypatch.setattr(from_dense, "load_registered", lambda spec, *a: loads.append(spec.name) or real(spec, *a))
    missing = oneshot_rows_missing([*rows, *nm_rows])
    results = prepare_oneshot_rows(missing, imagenet, recipe=recipe)
    assert sorted(loads) == ["tiny_cram", "tiny_cram_nm"]
    assert [(r.spec.method, r.spec.sparsity) for r in results] == [("cram", 0.5), ("cram", 0.9), ("cram_nm", 0.5)]
    assert oneshot_rows_missing([*rows, *nm_rows]) == []
    with pytest.raises(TransferbenchError, match="not a one-shot row"):
        prepare_oneshot_rows([named_checkpoint("tiny_cram")], imagenet, recipe=recipe)


def test_a_wrong_sha256_is_refused_and_nothing_is_written(home, imagenet, recipe, capsys):
    dense_path, _, _ = register_published(home)
    local = (home / "local.yaml").read_text()
    write_cram_file(dense_path, seed=5)  # another file under the registered name
    assert upstream("--method", "cram", "--from", "tiny_cram", "--sparsity", "0.9", "--recipe", str(recipe),
                    "--data-root", str(imagenet)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: checksum mismatch") and str(dense_path) in err[-1]
    assert (home / "local.yaml").read_text() == local and not (home / "upstream").exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--method", "cram", "--from", "nothing_here"], "no such file and no registered checkpoint"),
    (["--method", "gmp", "--from", "tiny_cram"], "use --method cram"),
    (["--method", "cram_nm", "--from", "tiny_cram", "--sparsity", "0.5"], "pass --method cram"),
    (["--method", "cram", "--from", "tiny_cram_90"], "pass --from tiny_cram"),
    (["--method", "cram_nm", "--from", "tiny_cram", "--sparsity", "0.9"], "pass --sparsity 0.5"),
    (["--method", "cram", "--from", "tiny_cram", "--arch", "resnet50"], "drop --arch resnet50"),
    (["--method", "cram", "--from", "SPARSE"], "not a dense model"),
    (["--method", "cram", "--from", "TEN_CLASSES"], "has 4 classes but"),
    (["--method", "cram", "--from", "tiny_cram", "--dataset", "cifar"], "unknown upstream dataset 'cifar'"),
])
def test_bad_input_is_one_line_and_exit_2(home, imagenet, recipe, tmp_path, capsys, args, expected):
    register_published(home)
    sparse = tmp_path / "sparse.pth"
    model = write_cram_file(sparse)
    for weight in weights(model).values():
        weight[weight.abs() < weight.abs().median()] = 0
    torch.save(model.state_dict(), sparse)
    write_cram_file(tmp_path / "ten.pth", num_classes=10)
    args = [{"SPARSE": str(sparse), "TEN_CLASSES": str(tmp_path / "ten.pth")}.get(a, a) for a in args]
    local = (home / "local.yaml").read_text()
    data = [] if "--dataset" in args else ["--recipe", str(recipe)]
    assert upstream(*args, *data, "--data-root", str(imagenet)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (log lines go to stderr too)
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in err, err
    assert (home / "local.yaml").read_text() == local and not (home / "upstream").exists()


def test_the_published_cram_rows_name_their_dense_file_and_command(home):
    multi, nm = named_checkpoint("cram_resnet50"), named_checkpoint("cram_nm_resnet50")
    assert (multi.method, multi.sparsity, multi.oneshot, nm.method, nm.sparsity) == ("cram", 0.0, False, "cram_nm", 0.0)
    rows = [find_checkpoint("cram", s) for s in (0.8, 0.9)]
    assert all(r.oneshot and r.oneshot_from == "cram_resnet50" and r.filename == multi.filename for r in rows)
    assert prepare_command(rows) == ("transferbench upstream --method cram --from cram_resnet50 --sparsity 0.8 0.9 "
                                     "--dataset imagenet --data-root IMAGENET")
    nm_row = find_checkpoint("cram_nm", 0.5)
    assert nm_row.oneshot_from == "cram_nm_resnet50" and nm_row.upstream_top1 == 77.2
    assert oneshot_rows_missing([*rows, nm_row, multi]) == [*rows, nm_row]  # an empty checkpoint directory
    with pytest.raises(TransferbenchError, match=r"run `transferbench upstream --method cram --from cram_resnet50 "
                                                 r"--sparsity 0.9 --dataset imagenet --data-root IMAGENET` first"):
        resolve_checkpoint("cram", 0.9, None, None)
    # the imagenet recipe calibrates as CrAM's BN tuning (§6.3, §6.5): 100 batches of 128 over 1000 images, seed 42
    assert load_recipe("imagenet_resnet50")["calibration"] == {"size": 1000, "seed": 42, "batches": 100,
                                                               "batch_size": 128}


def test_the_labels_of_a_subset_are_its_own(imagenet):
    folder = ImageFolder(imagenet / "train")
    subset = Subset(folder, [23, 0, 7])
    assert list(dataset_labels(subset)) == [3, 0, 1]
    assert set(balanced_sample(dataset_labels(subset), 3, 0)) == {0, 1, 2}  # indices into the subset


def test_rows_say_what_they_are_pruned_from():
    row = {"name": "x_90", "method": "cram", "sparsity": 0.9, "arch": "resnet50"}
    with pytest.raises(TransferbenchError, match="names the dense row it is pruned from"):
        CheckpointSpec.from_row({**row, "oneshot": True}, "t.yaml", "table")
    with pytest.raises(TransferbenchError, match="names the dense row it is pruned from"):
        CheckpointSpec.from_row({**row, "oneshot_from": "x"}, "t.yaml", "table")
    with pytest.raises(TransferbenchError, match="write NAME@sha256"):
        CheckpointSpec.from_row({**row, "pruned_from": "x@sha256:abc"}, "local.yaml", "local")
    for identity in ("x@sha256:" + "a" * 64, "sha256:" + "b" * 64):
        assert CheckpointSpec.from_row({**row, "pruned_from": identity}, "local.yaml", "local").pruned_from == identity


@pytest.mark.parametrize(("method", "flags", "registered"), [
    ("sparsegpt", ["--sparsity", "0.5", "0.7"], [("sparsegpt", 0.5), ("sparsegpt", 0.7)]),
    ("wanda", ["--pattern", "2:4"], [("wanda_nm", 0.5)]),
    ("magnitude", ["--sparsity", "0.6"], [("oneshot_magnitude", 0.6)]),
])
def test_prune_makes_registered_post_training_candidates_of_any_dense_file(method, flags, registered, home, imagenet,
                                                                          recipe, tmp_path, capsys):
    from transferbench.pruning.oneshot import scope_parameters

    dense_path = tmp_path / "plain_dense.pth"
    dense = write_cram_file(dense_path)  # a dense file by path: no registry row, any method may prune it
    assert main(["prune", "--method", method, *flags, "--from", str(dense_path), "--recipe", str(recipe),
                 "--calibration", "imagenet", "--data-root", str(imagenet), "--samples", "8"]) == 0
    out = capsys.readouterr().out
    assert f"transferbench run --method {registered[0][0]}" in out
    inside = set(scope_parameters(dense, "uniform"))  # every conv and linear but the stem and the head
    for name, sparsity in registered:
        spec = resolve_checkpoint(name, sparsity, "resnet_tiny", None)
        loaded = load_checkpoint_of(spec)  # the registry gate: the method's prunable set at its sparsity
        got = weights(loaded.model)
        for key, weight in got.items():
            zeros = float((weight == 0).float().mean())
            if key in inside:
                assert zeros == pytest.approx(sparsity, abs=0.02), key
            else:
                assert zeros == 0, key  # the stem and the head stay dense
        if name == "oneshot_magnitude":  # each layer keeps its largest |w|, computed here from the dense weights
            for key in inside:
                dense_w = weights(dense)[key].abs().flatten()
                kept = torch.zeros_like(dense_w, dtype=torch.bool)
                zeros = math.floor(sparsity * dense_w.numel() + 1e-9)  # at least the sparsity's share of zeros
                kept[dense_w.argsort(descending=True)[:dense_w.numel() - zeros]] = True
                assert torch.equal(got[key].flatten() != 0, kept), key
        if name.endswith("_nm"):  # 2 of every 4 consecutive inputs kept, per output row
            w = got["layer1.0.conv1.weight"] if "layer1.0.conv1.weight" in got else next(
                v for k, v in got.items() if k in inside)
            rows = w.permute(0, 2, 3, 1).reshape(-1, 4)
            assert ((rows != 0).sum(dim=1) <= 2).all()
        meta = torch.load(loaded.path, weights_only=True)["metadata"]
        assert meta["oneshot_pruning"].startswith(method) and meta["calibration"]["size"] == 8
        assert meta["source"]["sha256"] == sha256_file(dense_path)
    assert main(["prune", "--method", method, "--from", str(dense_path), "--recipe", str(recipe),
                 "--data-root", str(imagenet)]) == 2
    assert "give --sparsity" in capsys.readouterr().err


def load_checkpoint_of(ref):
    from transferbench.checkpoints import load_checkpoint
    from transferbench.checkpoints.resolve import registered_spec

    spec = registered_spec(ref)
    return load_checkpoint(ref.path, arch=ref.arch, expected_sha256=spec.sha256 if spec else None,
                           target_sparsity=ref.sparsity, method=ref.method, prunable=spec.prunable if spec else None)


def test_prune_calibrates_on_a_downstream_task_when_asked(home, imagenet, recipe, tmp_path, capsys):
    """`prune --calibration digits`: the sample is a class-balanced draw of that task's training images (its
    labels, not ImageNet's), the candidate is named after it and has no upstream top-1; the same pruning calibrated
    on ImageNet's images keeps other weights."""
    from transferbench.pruning.bn import balanced_sample, indices_digest
    from transferbench.tasks import load_split

    dense_path = tmp_path / "plain_dense.pth"
    write_cram_file(dense_path)
    masks = {}
    for source in ("digits", "imagenet"):
        assert main(["prune", "--method", "wanda", "--sparsity", "0.5", "--from", str(dense_path), "--recipe",
                     str(recipe), "--calibration", source, "--data-root", str(imagenet), "--samples", "20"]) == 0
        (path,) = [p for p in (home / "upstream").glob("*.pth") if ("_digits_" in p.name) == (source == "digits")]
        blob = torch.load(path, weights_only=True)
        masks[source] = {k: v for k, v in blob["model_state_dict"].items() if k.endswith("_weight_mask")}
        meta = blob["metadata"]
        if source == "digits":
            labels = np.asarray(load_split("digits", "train", None).labels)
            expected = balanced_sample(labels, 20, meta["calibration"]["seed"])
            assert meta["calibration"]["task"] == "digits" and meta["upstream_top1"] is None
            assert meta["calibration"]["indices_sha256"] == indices_digest(expected)
            assert sorted(np.bincount(labels[expected], minlength=10)) == [2] * 10  # 2 images of each digit
    assert any(not torch.equal(masks["digits"][k], masks["imagenet"][k]) for k in masks["digits"])
    assert main(["prune", "--method", "wanda", "--sparsity", "0.5", "--from", str(dense_path), "--recipe",
                 str(recipe), "--calibration", "faces", "--samples", "4"]) == 2
    assert "multi-label" in capsys.readouterr().err
