"""The command line: listings, `data check`, and the bad-input catalogue of `transferbench run`.

Every bad input must end with exit status 2, one line on stderr naming the problem and the fix, no
traceback, and nothing written to the results store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fixtures_data import write_task
from fixtures_models import write_pruned_checkpoint

from transferbench.checkpoints import find_checkpoint, register_local
from transferbench.cli import build_parser, main
from transferbench.cli_flags import OUT_DEPRECATION
from transferbench.runspec import HParams


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    write_task("cifar10", data, "folders", train_per_class=3, test_per_class=2, image_size=8)
    official = root / "official"
    write_task("cifar10", official, "official", train_per_class=3, test_per_class=2, image_size=8)
    three = root / "three_classes" / "cifar10"
    for split in ("train", "test"):
        for cls in ("a", "b", "c"):
            src = next((data / "cifar10" / split).iterdir())
            (three / split / cls).mkdir(parents=True)
            img = next(src.iterdir())
            (three / split / cls / img.name).write_bytes(img.read_bytes())
    ckpt = root / "tiny_50.pth"
    write_pruned_checkpoint(ckpt, sparsity=0.5)
    return {"root": root, "data": data, "official": official, "three": three.parent, "ckpt": ckpt}


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def _run_args(world, out, *extra, checkpoint=None, data=None):
    return ["run", "--checkpoint", checkpoint or world["ckpt"], "--sparsity", "0.5", "--task", "cifar10",
            "--data-root", data or world["data"], "--results", out, "--image-size", "32", "--epochs", "1",
            "--workers", "0", *extra]


def assert_clean_failure(code, err, out_dir: Path, *needles: str):
    lines = [line for line in err.splitlines() if not line[:4].isdigit()]  # drop timestamped log lines
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (out_dir / "runs").exists() or not any((out_dir / "runs").iterdir())


def test_tasks_list_shows_all_twelve(capsys):
    code, out, _ = run_cli(capsys, "tasks", "list")
    paper, _, rest = out.partition("offline mini-tasks")
    mini = rest.partition("bias-study tasks")[0]  # CelebA and its variants: tests/test_celeba.py
    names = [line.split()[0] for line in paper.strip().splitlines()[1:]]
    assert [line.split()[0] for line in mini.strip().splitlines()[2:]] == ["digits", "faces", "textures"]
    assert code == 0 and names == ["aircraft", "birds", "caltech101", "caltech256", "cars", "cifar10", "cifar100",
                                   "dtd", "flowers", "food101", "pets", "sun397"]
    code, out, _ = run_cli(capsys, "tasks", "show", "dtd")
    assert code == 0 and "train1 + val1" in out and "0.5322" in out
    code, out, _ = run_cli(capsys, "tasks", "show", "digits")
    assert code == 0 and "built in" in out


def test_checkpoints_list(capsys):
    code, out, _ = run_cli(capsys, "checkpoints", "list")
    methods = {line.split()[0] for line in out.splitlines()[1:]}
    assert code == 0
    assert {"dense", "acdc", "rigl_erk1x", "rigl_erk5x", "str", "woodfisher", "lth_t", "gmp", "cram",
            "mfac"} <= methods
    code, out, _ = run_cli(capsys, "checkpoints", "list", "--method", "acdc", "--arch", "mobilenet")
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["30%", "40%", "50%", "75%", "90%"]


@pytest.mark.parametrize("layout", ["data", "official"])
def test_data_check_prints_one_json_object(capsys, world, layout):
    code, out, _ = run_cli(capsys, "data", "check", "--task", "cifar10", "--data-root", world[layout])
    assert code == 0
    assert json.loads(out) == {"task": "cifar10", "layout": "folders" if layout == "data" else "official",
                               "num_classes": 10, "train_size": 30, "test_size": 20}


def test_data_check_fails_naming_the_missing_file(capsys, world, tmp_path):
    code, _, err = run_cli(capsys, "data", "check", "--task", "cifar10", "--data-root", tmp_path)
    assert code == 2 and "cifar-10-batches-py/batches.meta" in err and "train/<class>" in err
    code, _, err = run_cli(capsys, "data", "check", "--task", "cifar10", "--data-root", world["data"],
                           "--strict")
    assert code == 2 and "50000" in err.replace(",", "")


def test_bad_input_missing_data_root(capsys, world, tmp_path):
    code, _, err = run_cli(capsys, *_run_args(world, tmp_path, data=tmp_path / "nope"))
    assert_clean_failure(code, err, tmp_path, str(tmp_path / "nope"), "--data-root")


def test_bad_input_missing_split_file(capsys, world, tmp_path):
    broken = tmp_path / "broken"
    write_task("cifar10", broken, "official", train_per_class=1, test_per_class=1)
    (next(broken.rglob("test_batch"))).unlink()
    code, _, err = run_cli(capsys, *_run_args(world, tmp_path, data=broken))
    assert_clean_failure(code, err, tmp_path, "test_batch")


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--task", "imagenet-r", "unknown task 'imagenet-r'"),
])
def test_bad_input_unknown_task(capsys, world, tmp_path, flag, value, needle):
    args = _run_args(world, tmp_path)
    args[args.index(flag) + 1] = value
    code, _, err = run_cli(capsys, *args)
    assert_clean_failure(code, err, tmp_path, needle, "tasks list")


def test_bad_input_unknown_method_and_missing_registered_file(capsys, world, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    base = ["run", "--task", "cifar10", "--data-root", world["data"], "--results", tmp_path]
    code, _, err = run_cli(capsys, *base, "--method", "snip", "--sparsity", "0.9")
    assert_clean_failure(code, err, tmp_path, "unknown method 'snip'", "acdc")
    code, _, err = run_cli(capsys, *base, "--method", "acdc", "--sparsity", "0.85")
    assert_clean_failure(code, err, tmp_path, "available", "90%")
    code, _, err = run_cli(capsys, *base, "--method", "acdc", "--sparsity", "0.9")
    assert_clean_failure(code, err, tmp_path, str(tmp_path / "ckpts"), "seafile.ist.ac.at", "--checkpoint")


def test_bad_input_wrong_architecture(capsys, world, tmp_path):
    code, _, err = run_cli(capsys, *_run_args(world, tmp_path, "--arch", "resnet50"))
    assert_clean_failure(code, err, tmp_path, "resnet")


@pytest.mark.parametrize("damage", ["random", "truncated", "not_a_checkpoint"])
def test_bad_input_corrupt_checkpoints(capsys, world, tmp_path, damage):
    bad = tmp_path / f"{damage}.pth"
    blob = world["ckpt"].read_bytes()
    if damage == "random":
        bad.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        bad.write_bytes(blob[: len(blob) // 2])
    else:
        torch.save({"hello": "world", "numbers": [1, 2, 3]}, bad)
    code, _, err = run_cli(capsys, *_run_args(world, tmp_path, "--arch", "resnet_tiny", checkpoint=bad))
    assert_clean_failure(code, err, tmp_path, str(bad))


def test_bad_input_checksum_mismatch(capsys, world, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    mine = tmp_path / "mine.pth"
    mine.write_bytes(world["ckpt"].read_bytes())
    template = find_checkpoint("acdc", 0.9)
    from dataclasses import replace

    register_local(replace(template, name="mine_tiny_50", method="mine", sparsity=0.5, arch="resnet_tiny",
                           sha256=None, url=None), mine)
    base = ["run", "--method", "mine", "--sparsity", "0.5", "--arch", "resnet_tiny", "--task", "cifar10",
            "--data-root", world["data"], "--results", tmp_path, "--image-size", "32", "--epochs", "1",
            "--workers", "0"]
    with mine.open("ab") as f:  # the registered file changed after registration
        f.write(b"\0")
    code, _, err = run_cli(capsys, *base)
    assert_clean_failure(code, err, tmp_path, "sha256", str(mine))


def test_bad_input_class_count_mismatch(capsys, world, tmp_path):
    code, _, err = run_cli(capsys, *_run_args(world, tmp_path, data=world["three"]))
    assert_clean_failure(code, err, tmp_path, "3 classes", "10")


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_bad_input_nan_loss(capsys, world, tmp_path, mode):
    code, _, err = run_cli(capsys, *_run_args(world, tmp_path, "--mode", mode, "--lr", "1e30", "--epochs", "4"))
    assert_clean_failure(code, err, tmp_path, "NaN", "--lr")
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_bad_input_sparsity_gap_and_its_override(capsys, world, tmp_path):
    args = _run_args(world, tmp_path)
    args[args.index("--sparsity") + 1] = "0.9"
    code, _, err = run_cli(capsys, *args)
    assert_clean_failure(code, err, tmp_path, "--allow-sparsity-gap", "90%")
    code, _, _ = run_cli(capsys, *args, "--allow-sparsity-gap")
    assert code == 0


def test_a_checkpoint_without_sparsity_takes_its_measured_one(capsys, world, tmp_path, captured_specs):
    args = _run_args(world, tmp_path)
    i = args.index("--sparsity")
    del args[i:i + 2]
    assert run_cli(capsys, *args)[0] == 0
    assert (captured_specs[0].checkpoint.method, captured_specs[0].checkpoint.sparsity) == ("custom", 0.5)


def test_the_installed_command_prints_no_traceback(world, tmp_path):
    """The real console entry point, in a fresh interpreter, on a corrupt checkpoint."""
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    cmd = [sys.executable, "-m", "transferbench", *map(str, _run_args(world, tmp_path, "--arch", "resnet_tiny",
                                                                      checkpoint=bad))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr


def test_set_values_are_typed_and_bad_ones_are_one_line_errors(capsys, world, tmp_path):
    code, _, err = run_cli(capsys, *_run_args(world, tmp_path, "--set", "lbfgs_max_iter=abc"))
    assert_clean_failure(code, err, tmp_path, "lbfgs_max_iter", "int")
    code, _, err = run_cli(capsys, *_run_args(world, tmp_path, "--set", "eval_every=0"))
    assert_clean_failure(code, err, tmp_path, "eval_every")
    code, _, _ = run_cli(capsys, *_run_args(world, tmp_path, "--set", "lr=1e-3", "--set", "lr_decay_after=0,0"))
    assert code == 0
    record = json.loads(next(tmp_path.glob("runs/*/result.json")).read_text())
    assert record["config"]["hparams"]["lr"] == 0.001 and record["config"]["hparams"]["lr_decay_after"] == [0, 0]


def test_records_are_readable_by_collaborators(capsys, world, tmp_path):
    old = os.umask(0o022)
    try:
        assert run_cli(capsys, *_run_args(world, tmp_path))[0] == 0
    finally:
        os.umask(old)
    for path in tmp_path.glob("runs/*/*"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_a_changed_registered_file_is_a_new_run(capsys, world, tmp_path, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    mine = tmp_path / "mine.pth"
    spec = replace(find_checkpoint("acdc", 0.9), name="mine_tiny_50", method="mine", sparsity=0.5,
                   arch="resnet_tiny", sha256=None, url=None)
    args = ["run", "--method", "mine", "--sparsity", "0.5", "--arch", "resnet_tiny", "--task", "cifar10",
            "--data-root", world["data"], "--results", tmp_path / "out", "--image-size", "32", "--epochs", "1",
            "--workers", "0"]
    for seed in (0, 1):  # the same registry name, re-registered with a different file
        write_pruned_checkpoint(mine, sparsity=0.5, seed=seed)
        register_local(spec, mine)
        assert run_cli(capsys, *args)[0] == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("runs/*/result.json")]
    assert len(records) == 2 and len({r["checkpoint"]["sha256"] for r in records}) == 2


def test_collect_and_figures_without_results_are_one_line_errors(capsys, tmp_path):
    for command in ("collect", "figures"):
        code, _, err = run_cli(capsys, command, "--results", tmp_path / "nothing")
        assert code == 2 and err.strip().startswith("error: no results folder")


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_corrupt_image_is_a_one_line_error(capsys, world, tmp_path, workers):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    victim = next((data / "cifar10" / "test").rglob("*.jpg"))
    victim.write_bytes(b"this is not a jpeg")
    args = _run_args(world, tmp_path / "out", data=data)
    args[args.index("--workers") + 1] = workers
    code, _, err = run_cli(capsys, *args)
    assert_clean_failure(code, err, tmp_path / "out", str(victim), "re-extract")


# --- flags: --results everywhere, --out deprecated where it meant the results root ---

RESULTS_COMMANDS = {  # each command that reads or writes a results root, with its other required arguments
    "run": ["run", "--task", "digits"], "sweep": ["sweep", "mini"], "status": ["status", "mini"],
    "demo": ["demo"], "collect": ["collect"], "figures": ["figures"], "compare": ["compare"], "report": ["report"],
}


@pytest.mark.parametrize("command", sorted(RESULTS_COMMANDS))
def test_every_command_names_its_results_root_with_results(command):
    args = build_parser().parse_args([*RESULTS_COMMANDS[command], "--results", "elsewhere"])
    assert args.results == Path("elsewhere")


@pytest.mark.parametrize("command", ["run", "sweep", "status"])  # demo's --out: tests/test_demo.py
def test_out_still_names_the_results_root_with_one_note(command, capsys):
    args = build_parser().parse_args([*RESULTS_COMMANDS[command], "--out", "old", "--out", "older"])
    assert args.results == Path("older")
    assert capsys.readouterr().err.splitlines() == [OUT_DEPRECATION]
    build_parser().parse_args([*RESULTS_COMMANDS[command], "--results", "new"])
    assert capsys.readouterr().err == ""


def test_status_with_the_deprecated_out_reads_that_root(capsys, tmp_path):
    assert main(["status", "mini", "--out", str(tmp_path / "old")]) == 0
    out, err = capsys.readouterr()
    assert f"sweep mini -> {tmp_path / 'old'}" in out and err.splitlines()[0] == OUT_DEPRECATION


def test_out_names_output_folders_only(capsys):
    parser = build_parser()
    assert parser.parse_args(["upstream", "--method", "gmp", "--out", "ck"]).out == Path("ck")
    assert parser.parse_args(["data", "convert", "--task", "digits", "--out", "conv"]).out == Path("conv")
    assert parser.parse_args(["compare", "--out", "cmp"]).out == Path("cmp")
    assert capsys.readouterr().err == ""


# --- hyper-parameter flags come from HParams ---

TODAYS_FLAGS = ("epochs", "lr", "batch_size", "weight_decay", "momentum", "solver", "image_size", "interpolation",
                "precision", "loader", "engine")


def test_hparam_flags_are_generated_from_hparams(capsys):
    flagged = [f for f in fields(HParams) if f.metadata["flag"]]
    assert set(TODAYS_FLAGS) <= {f.name for f in flagged}
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for hparam in flagged:
        flag = f"--{hparam.name.replace('_', '-')}"
        choices = hparam.metadata["choices"]
        assert f"{flag} {{{','.join(choices)}}}" in help_text if choices else f"{flag} " in help_text, flag
        assert " ".join(hparam.metadata["help"].split()) in help_text, hparam.name
    assert "--lr-gamma" not in help_text and "lr_gamma" in help_text  # no flag, but --set lists every key


@pytest.fixture
def captured_specs(monkeypatch):
    """`transferbench run` up to the runner: the specs it would run (the DeepSparse environment taken as there)."""
    specs = []

    def fake_run(spec, ctx):
        specs.append(spec)
        return [SimpleNamespace(metrics=SimpleNamespace(top1=0.0, mean_per_class_acc=0.0),
                                config={"data": {"train_size": 8, "test_size": 8}})]  # read by --limit's note

    monkeypatch.setattr("transferbench.runner.run", fake_run)
    monkeypatch.setattr("transferbench.finetune.sparse_cpu.deepsparse_python", lambda: "python")
    return specs


def _sample_value(hparam) -> str:
    choices = hparam.metadata["choices"]
    return choices[-1] if choices else str(hparam.default * 2 or 8)  # a default of 0 (limit): 8


@pytest.mark.parametrize("name", [f.name for f in fields(HParams) if f.metadata["flag"]])
def test_a_flag_and_set_give_the_same_run(capsys, world, tmp_path, captured_specs, name):
    hparam = next(f for f in fields(HParams) if f.name == name)
    value = _sample_value(hparam)
    base = ["run", "--checkpoint", world["ckpt"], "--sparsity", "0.5", "--task", "digits", "--results", tmp_path]
    base += ["--train-size", "20"] if name == "validation_size" else []  # held out of a --train-size subset
    base += ["--precision", "bf16"] if value == "semi-structured" else []  # its kernels run in half precision
    for extra in ([], [f"--{name.replace('_', '-')}", value], ["--set", f"{name}={value}"]):
        assert run_cli(capsys, *base, *extra)[0] == 0
    default, by_flag, by_set = captured_specs
    assert by_flag.run_key == by_set.run_key != default.run_key
    assert str(getattr(by_flag.hparams, name)) == value


def test_a_flag_wins_over_set(capsys, world, tmp_path, captured_specs):
    assert run_cli(capsys, "run", "--checkpoint", world["ckpt"], "--sparsity", "0.5", "--task", "digits",
                   "--results", tmp_path, "--set", "lr=0.5", "--lr", "0.25")[0] == 0
    assert captured_specs[0].hparams.lr == 0.25


# --- the package root: a small, lazily imported public API ---

def test_import_transferbench_loads_no_torch():
    code = ("import sys, transferbench; assert 'torch' not in sys.modules, 'torch'; "
            "assert set(transferbench.__all__) <= set(dir(transferbench))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_public_name_resolves():
    import transferbench
    from transferbench import checkpoints, context, dispatch, runner, runspec, store, tasks
    from transferbench.report import build
    from transferbench.report.collect import collect

    expected = {"get_task": tasks.get_task, "find_checkpoint": checkpoints.find_checkpoint,
                "resolve_checkpoint": checkpoints.resolve_checkpoint, "make_spec": runspec.make_spec,
                "RunContext": context.RunContext, "run": runner.run, "RunRecord": store.RunRecord,
                "collect": collect, "plan_sweep": dispatch.plan_sweep, "write_report": build.write_report}
    assert sorted(transferbench.__all__) == sorted(expected)
    for name, value in expected.items():
        assert getattr(transferbench, name) is value, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        transferbench.nope  # noqa: B018


def test_a_listing_piped_into_head_ends_quietly():
    """`transferbench checkpoints list --json | head -c 1`: the reader leaves early; no BrokenPipeError traceback."""
    import subprocess
    import sys

    pipeline = f"{sys.executable} -m transferbench checkpoints list --json | head -c 1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.stdout.strip()
