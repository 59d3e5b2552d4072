"""Hyper-parameters typed and bounded in one schema (issue #15, point 4): every HParams field refused out of its
bounds through resolve_hparams, `run` flags, ``--set`` and sweep files alike, in one line naming it and its range;
seeds, workers and YAML tags on the command line; upstream options and recipes through the same validator; the grid
cap of sweeps, refused before anything is expanded."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from fixtures_models import write_pruned_checkpoint

from transferbench.bounds import SEED, Bounds
from transferbench.cli import main
from transferbench.dispatch.plan import MAX_RUNS, check_grid_size, plan_sweep
from transferbench.dispatch.sweep import load_sweep
from transferbench.errors import TransferbenchError
from transferbench.runspec import HParams, RunSpec, make_spec, resolve_hparams
from transferbench.upstream.options import LoopOptions
from transferbench.upstream.recipes import load_recipe, method_recipe, stretch_recipe

NAN, INF = float("nan"), float("inf")

# (overrides, words the one error line must hold: the field and what it admits)
REFUSED = [
    ({"epochs": 0}, "an integer >= 1"),
    ({"epochs": 1.7}, "not a whole number"),  # was silently 1, with the run key of 1
    ({"epochs": True}, "a boolean, not a number"),
    ({"epochs": "ten"}, "not an integer"),
    ({"batch_size": -64}, "an integer >= 1"),
    ({"lr": 0}, "a finite number > 0"),
    ({"lr": NAN}, "not finite"),
    ({"lr": "inf"}, "not finite"),
    ({"lr": "fast"}, "not a number"),
    ({"momentum": -0.9}, "a finite number >= 0"),
    ({"momentum": NAN}, "not finite"),
    ({"weight_decay": -5e-4}, "a finite number >= 0"),
    ({"weight_decay": INF}, "not finite"),
    ({"lr_decay_after": [-1]}, "item -1 is out of range"),
    ({"lr_decay_after": [1.5]}, "item 1.5 is not a whole number"),
    ({"lr_decay_after": [500], "epochs": 10}, "each below epochs (10)"),  # after the run: never applied
    ({"lr_decay_after": [9, 10], "epochs": 10}, "each below epochs (10)"),  # 0-based: epoch 10 is not in the run
    ({"lr_decay_after": [60, 30]}, "in increasing order"),
    ({"lr_gamma": 0}, "a finite number > 0"),
    ({"lr_gamma": -0.1}, "a finite number > 0"),
    ({"solver": "adam"}, "one of sgd, lbfgs"),
    ({"lbfgs_c_grid": []}, "at least 1 item"),
    ({"lbfgs_c_grid": [1.0, 0.0]}, "item 0.0 is out of range"),
    ({"lbfgs_c_grid": [NAN]}, "item nan is not finite"),
    ({"lbfgs_holdout": 2}, "a finite number in (0, 1)"),
    ({"lbfgs_holdout": 0}, "a finite number in (0, 1)"),
    ({"lbfgs_holdout": 1.0}, "a finite number in (0, 1)"),
    ({"lbfgs_max_iter": 0}, "an integer >= 1"),
    ({"image_size": 0}, "an integer >= 1"),
    ({"interpolation": "nearest"}, "bilinear, bicubic"),
    ({"eval_every": 0}, "an integer >= 1"),
    ({"precision": "fp8"}, "one of fp32, tf32, bf16, fp16"),
    ({"loader": "dali"}, "one of torchvision, ffcv"),
    ({"engine": "onnx"}, "one of torch, deepsparse"),
    ({"limit": -1}, "an integer >= 0"),
    ({"limit": 0.5}, "not a whole number"),
    ({"train_size": -5}, "an integer >= 0"),
    ({"train_size": "vtab2k"}, "or a preset: vtab1k"),
    ({"train_per_class": 2.5}, "not a whole number"),
    ({"validation_size": -1}, "an integer >= 0"),
]


def _field_of(overrides: dict) -> str:
    return next(k for k in overrides if k != "epochs") if len(overrides) > 1 else next(iter(overrides))


@pytest.mark.parametrize(("overrides", "words"), REFUSED, ids=[str(o) for o, _ in REFUSED])
def test_every_bound_is_refused_in_one_line_naming_the_field(overrides, words):
    with pytest.raises(TransferbenchError) as err:
        resolve_hparams("linear", 0.001, overrides)
    message = str(err.value)
    name = _field_of(overrides)
    assert "\n" not in message and f"hyper-parameter {name} (" in message and f"--set {name}=" in message
    assert words in message, message


def test_the_refusals_cover_every_field_and_every_default_fits_its_schema():
    assert {f.name for f in fields(HParams)} == {_field_of(o) for o, _ in REFUSED}
    for f in fields(HParams):
        bounds = f.metadata["bounds"]
        assert bounds.coerce(f.default) == f.default, f.name


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"epochs": 2.0}, {"epochs": 2, "lr_decay_after": (0, 0)}),  # round(51·2/150)−1 = round(101·2/150)−1 = 0
    ({"epochs": "30"}, {"epochs": 30, "lr_decay_after": (9, 19)}),  # round(10.2)−1, round(20.2)−1
    ({"lr": "1e-3"}, {"lr": 0.001}),  # YAML 1.1 reads 1e-3 as text
    ({"lr": 1}, {"lr": 1.0}),
    ({"momentum": 0, "weight_decay": 0}, {"momentum": 0.0, "weight_decay": 0.0}),
    ({"lr_decay_after": "30,60"}, {"lr_decay_after": (30, 60)}),
    ({"lr_decay_after": []}, {"lr_decay_after": ()}),  # a constant LR
    ({"lr_decay_after": [149, 149]}, {"lr_decay_after": (149, 149)}),  # twice at the last epoch: allowed
    ({"lr_decay_after": [0, 0], "epochs": 1}, {"lr_decay_after": (0, 0)}),  # the last epoch: allowed (test_cli's --set)
    ({"lbfgs_c_grid": "[1, 10]"}, {"lbfgs_c_grid": (1.0, 10.0)}),
    ({"lbfgs_holdout": 0.5, "lbfgs_max_iter": 50.0}, {"lbfgs_holdout": 0.5, "lbfgs_max_iter": 50}),
    ({"interpolation": ""}, {"interpolation": ""}),  # the architecture's
    ({"limit": "64"}, {"limit": 64}),
])
def test_hand_checked_values_are_accepted_as_their_type(overrides, expected):
    hp = resolve_hparams("linear", 0.001, overrides)
    for name, value in expected.items():
        assert getattr(hp, name) == value and type(getattr(hp, name)) is type(value), name


def test_an_integral_float_is_the_same_run_and_a_fraction_is_no_run():
    ref = SimpleNamespace(method="acdc", sparsity=0.9, arch="resnet50", identity="acdc-resnet50-90")
    assert make_spec("cifar10", "full", 21, ref, {"epochs": 2.0}).run_key == \
        make_spec("cifar10", "full", 21, ref, {"epochs": 2}).run_key
    with pytest.raises(TransferbenchError, match="not a whole number"):
        make_spec("cifar10", "full", 21, ref, {"epochs": 1.7})


def test_the_python_api_gets_the_same_checks():
    with pytest.raises(TransferbenchError, match="hyper-parameter momentum"):
        HParams(momentum=-1)
    with pytest.raises(TransferbenchError, match="each below epochs"):
        HParams(epochs=10)  # the default decay points 50 and 100 fall after a 10-epoch run
    assert HParams(lbfgs_c_grid=[1, 2]).lbfgs_c_grid == (1.0, 2.0)  # hashable, as a frozen spec must be
    hp = resolve_hparams("linear", 0.001)
    with pytest.raises(TransferbenchError, match="--seed"):
        RunSpec("cifar10", "linear", -1, SimpleNamespace(), hp)


def test_bounds_say_what_they_admit():
    assert str(Bounds(float, low=0, high=1, low_open=True, high_open=True)) == "a finite number in (0, 1)"
    assert str(SEED) == "an integer in [0, 4294967295]"
    assert str(Bounds(tuple, item=Bounds(int, low=0), min_items=1)) == \
        "a list, each item an integer >= 0, at least 1 item(s)"
    assert str(Bounds(int, low=0, optional=True)) == "an integer >= 0 (or none: the default)"


def test_the_seed_bounds_are_those_of_numpy_and_torch():
    import torch

    for seed in (SEED.low, SEED.high):
        np.random.RandomState(seed)  # scikit-learn's random_state (the L-BFGS hold-out split)
        torch.manual_seed(seed)
    with pytest.raises(ValueError):
        np.random.RandomState(SEED.high + 1)
    for bad in (-1, SEED.high + 1, 2**70, 2.5):
        with pytest.raises(TransferbenchError, match="--seed"):
            SEED.check(bad, "--seed")


# --- the command line: one `error:` line, exit 2, nothing written -----------------------------------------------

RUN = ["run", "--task", "digits", "--method", "dense", "--sparsity", "0"]


def _refused(capsys, args: list[str], results, *needles: str) -> str:
    """The command's one error line, after checking it refused: exit 2, no traceback, nothing under ``results``
    (passed as --results unless the command writes elsewhere, as `upstream --out`)."""
    code = main([*args, "--results", str(results)] if "--out" not in args else args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line[:4].isdigit()]  # timestamped log lines aside
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and all(n in lines[0] for n in needles), (needles, lines[0])
    assert not results.exists() or not any(results.iterdir())
    return lines[0]


@pytest.mark.parametrize(("extra", "needles"), [
    (["--set", "lr=.nan"], ["hyper-parameter lr", "not finite", "> 0"]),
    (["--set", "epochs=1.7"], ["--epochs or --set epochs=", "not a whole number", "an integer >= 1"]),
    (["--set", "lbfgs_holdout=2"], ["lbfgs_holdout", "in (0, 1)"]),
    (["--set", "lbfgs_c_grid=[]"], ["lbfgs_c_grid", "at least 1 item"]),
    (["--set", "momentum=-0.9"], ["momentum", ">= 0"]),
    (["--set", "lr_gamma=0"], ["lr_gamma", "> 0"]),
    (["--set", "lr_decay_after=[500]", "--epochs", "10"], ["lr_decay_after", "below epochs (10)"]),
    (["--set", "lr=!!python/name:os.system"], ["--set lr=!!python/name:os.system", "not a plain YAML value"]),
    (["--epochs", "1.7"], ["--epochs", "not a whole number"]),  # a flag: the schema's line, not argparse's usage
    (["--lr", "inf"], ["--lr", "not finite"]),
    (["--solver", "adam"], ["--solver", "one of sgd, lbfgs"]),
    (["--seed", "-1"], ["--seed", "in [0, 4294967295]"]),
    (["--seed", str(2**40)], ["--seed", "in [0, 4294967295]"]),
    (["--workers", "-1"], ["--workers", ">= 0"]),
])
def test_run_refuses_bad_values_in_one_line(capsys, tmp_path, extra, needles):
    _refused(capsys, [*RUN, *extra], tmp_path / "results", *needles)


def test_a_yaml_tag_runs_nothing_in_a_fresh_interpreter(tmp_path):
    marker = tmp_path / "ran"
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "transferbench", *RUN, "--results", str(results), "--set",
                           f"lr=!!python/object/apply:os.system [\"touch {marker}\"]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --set lr="), \
        proc.stderr
    assert not marker.exists() and not results.exists()


def test_run_flags_and_set_reach_the_spec_coerced(capsys, tmp_path, monkeypatch):
    specs = []
    monkeypatch.setattr("transferbench.runner.run", lambda spec, ctx: specs.append(spec) or [SimpleNamespace(
        metrics=SimpleNamespace(top1=0.0, mean_per_class_acc=0.0), config={})])
    ckpt = tmp_path / "tiny.pth"
    write_pruned_checkpoint(ckpt, sparsity=0.5)
    base = ["run", "--task", "digits", "--checkpoint", str(ckpt), "--sparsity", "0.5", "--results", str(tmp_path)]
    assert main([*base, "--epochs", "2.0", "--set", "lr=1e-3"]) == 0
    assert main([*base, "--set", "epochs=2", "--lr", "0.001"]) == 0
    assert specs[0].hparams.epochs == 2 and specs[0].hparams.lr == 0.001 and specs[0].run_key == specs[1].run_key


def test_run_help_shows_each_flags_range(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "override the protocol's 150 epochs (an integer >= 1)" in text
    assert "override the protocol's momentum 0.9 (a finite number >= 0)" in text


# --- sweep files ----------------------------------------------------------------------------------------------------

def _sweep(path, **changes) -> str:
    spec = {"name": "s", "checkpoints": [{"method": "dense", "sparsity": 0, "arch": "resnet_tiny"}],
            "tasks": ["digits"], "modes": ["linear"], "seeds": [1, 2, 3], **changes}
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize(("changes", "needles"), [
    ({"overrides": {"lr": NAN}}, ["overrides for linear", "hyper-parameter lr", "not finite"]),  # YAML .nan
    ({"overrides": {"linear": {"weight_decay": -1}}}, ["weight_decay", ">= 0"]),
    ({"overrides": {"epochs": 1.7}}, ["epochs", "not a whole number"]),
    ({"seeds": [1, -1]}, ["seeds", "in [0, 4294967295]"]),
    ({"seeds": [2.5]}, ["seeds", "not a whole number"]),
])
def test_sweep_files_get_the_same_checks(capsys, tmp_path, changes, needles):
    sweep_file = _sweep(tmp_path / "s.yaml", **changes)
    with pytest.raises(TransferbenchError, match=r"sweep .*s\.yaml"):
        load_sweep(sweep_file)
    _refused(capsys, ["sweep", sweep_file, "--dry-run"], tmp_path / "results", sweep_file, *needles)


def test_sweep_workers_must_not_be_negative(capsys, tmp_path):
    _refused(capsys, ["sweep", _sweep(tmp_path / "s.yaml"), "--dry-run", "--workers", "-1"], tmp_path / "results",
             "--workers", ">= 0")


@pytest.mark.parametrize("workers", ["-1", "0"])
def test_data_convert_needs_at_least_one_encoding_process(capsys, tmp_path, workers):
    out = tmp_path / "betons"
    _refused(capsys, ["data", "convert", "--task", "digits", "--out", str(out), "--workers", workers], out,
             "--workers", ">= 1")


def test_a_huge_grid_is_refused_before_it_is_expanded(capsys, tmp_path):
    methods = [{"method": m, "sparsity": s} for m in ("acdc", "gmp", "magnitude", "rigl", "woodfisher")
               for s in ("80%", "90%")]  # 10 checkpoints x 2 tasks x 2 modes x 5000 seeds
    sweep_file = _sweep(tmp_path / "big.yaml", checkpoints=methods, tasks=["digits", "textures"],
                        modes=["linear", "full"], seeds=list(range(5000)))
    start = time.perf_counter()
    line = _refused(capsys, ["sweep", sweep_file, "--dry-run"], tmp_path / "results",
                    f"its grid has 200000 runs, more than the cap of {MAX_RUNS}", "--max-runs 200000")
    assert time.perf_counter() - start < 2.0, line  # loading 5000 seeds included; the plan took 40 s
    _refused(capsys, ["status", sweep_file], tmp_path / "results", "--max-runs 200000")
    sweep = load_sweep(sweep_file)
    start = time.perf_counter()
    with pytest.raises(TransferbenchError, match="--max-runs 200000"):
        plan_sweep(sweep, tmp_path / "results")
    assert time.perf_counter() - start < 0.05
    assert check_grid_size(sweep, 200_000) == 200_000


def test_max_runs_admits_a_grid_over_the_default_cap(capsys, tmp_path):
    sweep_file = _sweep(tmp_path / "s.yaml")  # 3 runs
    _refused(capsys, ["sweep", sweep_file, "--dry-run", "--max-runs", "2"], tmp_path / "results",
             "its grid has 3 runs, more than the cap of 2", "--max-runs 3")
    assert main(["sweep", sweep_file, "--dry-run", "--max-runs", "3", "--executor", "local",
                 "--results", str(tmp_path / "results")]) == 0
    assert "to run: 3 run(s)" in capsys.readouterr().out
    assert len(plan_sweep(load_sweep(sweep_file), tmp_path / "results", max_runs=3).specs) == 3


def test_sweep_help_names_the_default_cap(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert f"default {MAX_RUNS}" in capsys.readouterr().out


# --- upstream: loop options and recipes through the same validator -------------------------------------------------

def test_upstream_loop_options_are_bounded():
    with pytest.raises(TransferbenchError, match=r"^--workers -1: out of range; allowed: an integer >= 0"):
        LoopOptions(workers=-1)
    with pytest.raises(TransferbenchError, match=r"^--precision 'fp16': .*one of fp32, bf16, fp64"):
        LoopOptions(precision="fp16")
    with pytest.raises(TransferbenchError, match=r"--sync-bn .*true or false"):
        LoopOptions(sync_bn="yes")
    assert LoopOptions(workers=2.0).workers == 2 and LoopOptions().workers is None


@pytest.mark.parametrize(("args", "needles"), [
    (["--seed", "-1"], ["--seed", "in [0, 4294967295]"]),
    (["--workers", "-1"], ["--workers", ">= 0"]),
])
def test_upstream_refuses_bad_values_in_one_line(capsys, tmp_path, monkeypatch, args, needles):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    _refused(capsys, ["upstream", "--method", "dense", "--out", str(tmp_path / "out"), *args], tmp_path / "out",
             *needles)
    assert not (tmp_path / "ckpts").exists()


def _recipe(tmp_path, section: str | None, key: str, value) -> str:
    recipe = load_recipe("small_cpu")
    recipe["name"] = "mine"
    if section:
        recipe[section] = {**recipe[section], key: value}
    else:
        recipe[key] = value
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.mark.parametrize(("section", "key", "value", "words"), [
    ("optimizer", "momentum", -0.9, "optimizer momentum: out of range; allowed: a finite number >= 0"),
    ("optimizer", "weight_decay", -1e-4, "optimizer weight_decay"),
    ("optimizer", "lr", NAN, "optimizer lr: not finite"),
    ("optimizer", "lr", 0, "optimizer lr: out of range; allowed: a finite number > 0"),
    ("optimizer", "nesterov", "yes", "optimizer nesterov: not true or false"),
    ("schedule", "warmup_epochs", -1, "schedule warmup_epochs"),
    ("schedule", "per", "batch", "schedule per: not one of the choices"),
    (None, "epochs", 1.7, "epochs: not a whole number"),
    (None, "batch_size", 0, "batch_size: out of range"),
    (None, "label_smoothing", 1.0, "label_smoothing: out of range; allowed: a finite number in [0, 1)"),
])
def test_recipe_values_are_bounded(tmp_path, section, key, value, words):
    with pytest.raises(TransferbenchError) as err:
        method_recipe("dense", _recipe(tmp_path, section, key, value))
    assert str(err.value).startswith("recipe mine, method dense: bad value ")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_recipe_step_and_multistep_schedules_are_bounded(tmp_path):
    for schedule, words in (({"kind": "step", "constant_until": 2, "every": 0, "gamma": 0.5}, "schedule every"),
                            ({"kind": "step", "constant_until": 2, "every": 1, "gamma": 0}, "schedule gamma"),
                            ({"kind": "step", "constant_until": 2.5, "every": 1, "gamma": 0.5}, "constant_until"),
                            ({"kind": "multistep", "milestones": [3, -1]}, "item -1 is out of range")):
        with pytest.raises(TransferbenchError, match=words):
            method_recipe("dense", _recipe(tmp_path, None, "schedule", schedule))
    rec = load_recipe("small_cpu")
    with pytest.raises(TransferbenchError, match="training_steps_multiplier: not finite"):
        stretch_recipe(rec, NAN, "rigl")


def test_recipe_text_numbers_are_read_and_written_values_kept(tmp_path):
    rec, _ = method_recipe("dense", _recipe(tmp_path, "optimizer", "lr", "5e-2"))  # YAML 1.1: text
    assert rec["optimizer"]["lr"] == 0.05
    rigl, _ = method_recipe("rigl_erk1x", "imagenet_resnet50")  # as written: part of the run's identity
    milestones = rigl["schedule"]["milestones"]
    assert milestones == [30, 70, 90] and all(type(m) is int for m in milestones)
    assert rigl["schedule"]["warmup_epochs"] == 5 and type(rigl["schedule"]["warmup_epochs"]) is int
    assert math.isclose(rigl["optimizer"]["lr"], 1.6) and rigl["optimizer"]["nesterov"] is True


def test_sweep_upstream_seeds_are_bounded_as_upstream_seed(tmp_path):
    sweep_file = _sweep(tmp_path / "s.yaml", checkpoints=[],
                        upstream=[{"method": "magnitude", "sparsity": "50%", "seed": -1}])
    with pytest.raises(TransferbenchError, match=r"s\.yaml: bad value -1 for upstream seeds: out of range"):
        load_sweep(sweep_file)
