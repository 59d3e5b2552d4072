"""No silent costly defaults, and docs that ship: the chance flag of upstream models, `run --train-missing`, the
upstream stage's lines, the CPU profile of mini-task sweeps, no literal `jobs/%j/` folder, and no user-facing text
that points outside the repository."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from transferbench.checkpoints import CheckpointSpec, register_local
from transferbench.checkpoints.registry import list_checkpoints
from transferbench.cli import build_parser, main
from transferbench.dispatch.profiles import default_profile_name, load_profile
from transferbench.dispatch.submit import job_folder, remove_placeholder_folder
from transferbench.upstream import mini
from transferbench.upstream.chance import at_chance, chance_note, chance_summary, chance_threshold

REPO = Path(__file__).resolve().parents[1]
TRAINED_HERE = "trained by transferbench upstream (small_cpu recipe, shapes, seed 0)"


@pytest.fixture
def checkpoint_home(tmp_path, monkeypatch):
    home = tmp_path / "ckpts"
    home.mkdir()
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(home))
    return home


# ------------------------------------------------------------------------------------------ chance flag


def test_chance_threshold_by_hand():
    # 16 classes, 1000 test images: chance 1/16 = 0.0625, SE = sqrt(0.0625 * 0.9375 / 1000) = 0.0076547
    assert chance_threshold(16, 1000) == pytest.approx(0.0625 + 2 * 0.0076547, abs=1e-6)
    assert at_chance(0.063, 16, 1000)  # the demo's LTH 90% ticket, 6.3%
    assert at_chance(0.0778, 16, 1000) and not at_chance(0.0779, 16, 1000)
    # 10 classes, 100 images: 0.1 + 2 * sqrt(0.1 * 0.9 / 100) = 0.1 + 2 * 0.03 = 0.16
    assert chance_threshold(10, 100) == pytest.approx(0.16)
    assert at_chance(0.05, 10, 100) and at_chance(0.16, 10, 100) and not at_chance(0.161, 10, 100)
    with pytest.raises(ValueError):
        chance_threshold(1, 100)


def test_the_note_says_why_an_lth_ticket_may_be_at_chance():
    assert "without retraining" in chance_note("lth", 0.063, 16, 1000)
    assert "without retraining" not in chance_note("gmp", 0.063, 16, 1000)
    assert "6.30% vs chance 6.25%" in chance_note("gmp", 0.063, 16, 1000)


def test_a_model_at_chance_is_flagged_in_metadata_registry_listing_and_summary(checkpoint_home, capsys):
    from transferbench.models import create_model
    from transferbench.upstream.candidates import register_candidate

    net = create_model("resnet_tiny", num_classes=4)
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)  # equal logits: argmax is class 0, a quarter of a balanced set
    test_set = TensorDataset(torch.randn(40, 3, 32, 32), torch.arange(40) % 4)
    rec = {"name": "small_cpu", "arch": "resnet_tiny", "dataset": "shapes"}
    result = register_candidate(checkpoint_home, rec, "lth", 0.9, net, {}, test_set, torch.device("cpu"), 0, 1.5)
    assert result.top1 == 0.25  # ≤ 0.25 + 2·sqrt(0.25·0.75/40) = 0.3869: chance
    metadata = torch.load(result.path, weights_only=True)["metadata"]
    assert metadata["at_chance"] is True and metadata["chance_threshold"] == pytest.approx(0.25 + 2 * math.sqrt(
        0.25 * 0.75 / 40))
    (row,) = [s for s in list_checkpoints() if s.source == "local"]
    assert row.at_chance is True and "AT CHANCE" in row.notes and "without retraining" in row.notes
    assert row.upstream_data == "shapes"  # the notes still say where top-1 was measured
    assert main(["checkpoints", "list", "--arch", "resnet_tiny"]) == 0
    assert "25.00 (chance)" in capsys.readouterr().out
    (line, lth) = chance_summary()
    assert "lth 90% resnet_tiny (25.00%)" in line and "without retraining" in lth


def test_a_model_above_chance_is_not_flagged(checkpoint_home):
    from transferbench.models import create_model
    from transferbench.upstream.candidates import register_candidate

    net = create_model("resnet_tiny", num_classes=4)
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([1.0, 0, 0, 0]))  # always class 0: 30 of 40 test images are class 0
    test_set = TensorDataset(torch.randn(40, 3, 32, 32), torch.tensor([0] * 30 + [1, 2, 3] * 3 + [1]))
    rec = {"name": "small_cpu", "arch": "resnet_tiny", "dataset": "shapes"}
    result = register_candidate(checkpoint_home, rec, "gmp", 0.9, net, {}, test_set, torch.device("cpu"), 0, 1.5)
    assert result.top1 == 0.75
    (row,) = [s for s in list_checkpoints() if s.source == "local"]
    assert row.at_chance is False and "CHANCE" not in row.notes and chance_summary() == []


# ------------------------------------------------------------------------------------------ --train-missing


def test_run_without_train_missing_is_one_line_and_no_work(checkpoint_home, tmp_path, capsys):
    code = main(["run", "--method", "gmp", "--task", "digits", "--results", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if not line[:4].isdigit()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: no gmp upstream model at 90% (the mini-suite's default; --sparsity chooses)")
    assert "has not been timed yet" in err[0] and "--train-missing" in err[0]
    assert "`transferbench upstream --method gmp --sparsity 90% --arch resnet_tiny`" in err[0]
    assert not (tmp_path / "out").exists() and not any(checkpoint_home.iterdir())


def _timed_row(home: Path, method: str, sparsity: float, seconds: float) -> None:
    path = home / f"{method}_{sparsity}.pth"
    torch.save({"metadata": {"train_seconds": seconds}}, path)
    register_local(CheckpointSpec(name=f"resnet_tiny_{method}_{sparsity}", method=method, sparsity=sparsity,
                                  arch="resnet_tiny", notes=TRAINED_HERE), path)


def test_the_line_says_how_long_the_last_training_took(checkpoint_home):
    _timed_row(checkpoint_home, "gmp", 0.8, 61.6)
    assert mini.last_training_time("acdc") == "took 62 s last time, for gmp 80%"  # another method's, said so
    _timed_row(checkpoint_home, "acdc", 0.8, 300.0)
    assert mini.last_training_time("acdc") == "took 300 s last time, for acdc 80%"  # the method's own first
    assert mini.last_training_time("acdc", recipe="imagenet_resnet50") == "has not been timed yet"


def test_train_missing_says_what_it_does_then_trains(checkpoint_home, monkeypatch):
    trained = []

    def fake_training(method, sparsities, arch):  # as train_mini_checkpoints: only what is missing
        missing = [s for s in sparsities if mini.mini_checkpoint_missing(method, s, arch)]
        if missing:
            trained.append((method, missing, arch))
            _timed_row(checkpoint_home, method, missing[0], 5.0)
        return missing

    monkeypatch.setattr(mini, "train_mini_checkpoints", fake_training)
    lines = []
    ref = mini.ensure_mini_checkpoint("acdc", 0.95, train_missing=True, echo=lines.append)
    assert trained == [("acdc", [0.95], "resnet_tiny")] and ref.sparsity == 0.95
    assert lines == ["no acdc upstream model at 95% is registered for resnet_tiny; training one with the small_cpu "
                     "recipe on this machine has not been timed yet: training it now (--train-missing)"]
    lines.clear()
    mini.ensure_mini_checkpoint("acdc", 0.95, echo=lines.append)  # registered now: no training, no line
    assert trained == [("acdc", [0.95], "resnet_tiny")] and lines == []
    _timed_row(checkpoint_home, "acdc", 0.9, 5.0)
    assert mini.ensure_mini_checkpoint("acdc", None, echo=lines.append).sparsity == 0.9
    assert lines == ["--sparsity not given: acdc at the mini-suite's default 90%"]  # a default is said, not silent


def test_the_upstream_stage_says_what_it_trains_and_how_long_it_took(checkpoint_home, monkeypatch):
    from transferbench.dispatch import stages
    from transferbench.dispatch.upstream_spec import make_unit

    _timed_row(checkpoint_home, "gmp", 0.8, 42.0)
    monkeypatch.setattr(stages, "execute_upstream", lambda *a, **k: [])
    lines = []
    unit = make_unit("gmp", [0.9], recipe="small_cpu", arch="resnet_tiny", single_process=True)
    assert stages.run_upstream_here([unit], None, echo=lines.append) == []
    assert lines[0] == "upstream stage: 1 model(s) to make in this process before the transfer jobs start"
    assert lines[1].startswith("[upstream 1/1] training gmp 90% resnet_tiny")
    assert lines[1].endswith("... (here it took 42 s last time, for gmp 80%)")
    assert lines[2].startswith(f"[upstream 1/1] {unit.name} ready (")


# ------------------------------------------------------------------------------------------ profiles, jobs/%j


def test_mini_task_sweeps_default_to_the_cpu_profile():
    from transferbench.dispatch.upstream_spec import make_unit

    assert default_profile_name(("digits", "textures")) == "cpu"
    assert default_profile_name(("digits", "cifar10")) == "default"
    sized = make_unit("gmp", [0.9], recipe="small_cpu", arch="resnet_tiny", gpus=4)  # an upstream entry's GPUs
    assert default_profile_name(("digits",), [sized]) == "default"
    assert default_profile_name(("digits",), [make_unit("gmp", [0.9], recipe="small_cpu", arch="resnet_tiny")]) == "cpu"
    cpu = load_profile("cpu")
    assert cpu.gpus_per_node == 0 and cpu.mem_gb <= 8 and max(cpu.time_min.values()) <= 120
    assert cpu.upstream_layout(single_process=True).gpus_per_node == 0
    assert build_parser().parse_args(["sweep", "mini"]).profile is None  # chosen from the sweep's tasks


def test_a_mini_sweep_dry_run_asks_slurm_for_no_gpu(tmp_path, checkpoint_home, capsys):
    assert main(["sweep", "mini", "--executor", "slurm", "--dry-run", "--results", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --mem=4GB" in out and "gpus" not in out.lower()
    assert not (tmp_path / "out").exists()


def test_a_sweep_file_names_its_profile_and_the_flag_wins(tmp_path, checkpoint_home, capsys):
    import yaml

    from transferbench.shipped import load

    raw, _, _ = load("sweep", "mini")
    sweep_file = tmp_path / "mine.yaml"
    sweep_file.write_text(yaml.safe_dump({**raw, "profile": "default"}))
    dry = ["sweep", str(sweep_file), "--executor", "slurm", "--dry-run", "--results", str(tmp_path / "out")]
    assert main(dry) == 0
    assert "#SBATCH --gpus-per-node=1" in capsys.readouterr().out  # the file's profile, not the mini-task default
    assert main([*dry, "--profile", "cpu"]) == 0
    assert "gpus" not in capsys.readouterr().out.lower()
    sweep_file.write_text(yaml.safe_dump({**raw, "profile": ["a100"]}))
    assert main(dry) == 2
    assert "profile must be a profile name" in capsys.readouterr().err


def test_the_literal_job_folder_of_submitits_local_controller_is_removed(tmp_path):
    import submitit

    executor = submitit.LocalExecutor(folder=job_folder(tmp_path))
    executor.update_parameters(timeout_min=1)
    assert executor.submit(int, "7").result() == 7
    assert (tmp_path / "jobs" / "%j").is_dir()  # what submitit leaves: the pattern's folder, empty
    remove_placeholder_folder(job_folder(tmp_path))
    assert not (tmp_path / "jobs" / "%j").exists() and len(list((tmp_path / "jobs").iterdir())) == 1


# ------------------------------------------------------------------------------------------ docs ship


OUTSIDE = re.compile(r"\.\./shared|shared/reference|transfer_protocol\.md|pruning_methods\.md|bias_analysis\.md")


def _string_literals(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings (help texts, messages, f-string parts)."""
    import ast

    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_user_facing_string_points_outside_the_repository():
    """Help texts, error messages and warnings (every non-docstring string constant of the package)."""
    offenders = [f"{path.relative_to(REPO)}: {text[:80]!r}" for path in sorted((REPO / "transferbench").rglob("*.py"))
                 for text in _string_literals(path) if OUTSIDE_OR_UNSHIPPED.search(text)]
    assert offenders == []


def test_the_check_finds_what_it_looks_for(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Docstring (transfer_protocol.md §5) is for developers."""\n'
                      'def f():\n    """So is this (../shared/reference)."""\n'
                      '    raise ValueError(f"see ../shared/reference/x.md for {1}")\n')
    found = [t for t in _string_literals(module) if OUTSIDE_OR_UNSHIPPED.search(t)]
    assert found == ["see ../shared/reference/x.md for "]


# ... and in what users read beside the code: section signs and pitfall numbers of notes that do not ship
OUTSIDE_OR_UNSHIPPED = re.compile(OUTSIDE.pattern + r"|§|pitfall P\d")


def test_the_readme_docs_and_shipped_files_point_inside_the_repository():
    files = [REPO / "README.md", REPO / "results" / "README.md", *(REPO / "docs").glob("*.md"),
             *(REPO / "transferbench" / "shipped").rglob("*.yaml"), *(REPO / "tasks").glob("*.yaml"),
             *(REPO / "slurm").glob("*.yaml"), *(REPO / "slurm").glob("*.md")]
    offenders = [f"{f.relative_to(REPO)}:{n}" for f in files for n, line in enumerate(f.read_text().splitlines(), 1)
                 if OUTSIDE_OR_UNSHIPPED.search(line)]
    assert offenders == []


def test_every_docs_protocol_anchor_named_in_the_source_exists():
    text = (REPO / "docs" / "protocol.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"(?m)^#+ (.+)$", text)}
    named = {m for f in [*(REPO / "transferbench").rglob("*.py"), *(REPO / "transferbench").rglob("*.yaml"),
                         REPO / "README.md", *(REPO / "docs").glob("*.md")]
             for m in re.findall(r"docs/protocol\.md#([a-z0-9-]+)", f.read_text())}
    assert named and named <= anchors, named - anchors


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
