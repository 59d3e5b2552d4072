"""Sweep specs and planning: the paper's grids, packing into jobs, dry runs, bad specs."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from fixtures_data import PAPER_RESULTS
from fixtures_records import write_completed
from fixtures_sweep import write_fixture_sweep, write_tiny_recipe

from transferbench.checkpoints import CheckpointSpec, register_local, resolve_checkpoint
from transferbench.cli import main
from transferbench.dispatch import load_profile, load_sweep, plan_sweep, sbatch_preview
from transferbench.dispatch.plan import resolve_waiting
from transferbench.dispatch.submit import split_parallelism
from transferbench.errors import TransferbenchError
from transferbench.runspec import CheckpointRef, make_spec
from transferbench.store import FAILED, LOST, MISSING
from transferbench.tasks import list_tasks

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize(("name", "mode", "runs", "jobs"), [
    ("paper_resnet50_linear", "linear", 1200, 240),
    ("paper_resnet50_full", "full", 720, 720),
    ("paper_mobilenet_linear", "linear", 600, 120),
    ("paper_mobilenet_full", "full", 120, 120),
])
def test_paper_sweeps_have_the_papers_grid(name, mode, runs, jobs, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "none"))
    sweep = load_sweep(name)
    assert sweep.tasks == tuple(t.name for t in list_tasks()) and len(sweep.tasks) == 12
    assert sweep.grid_size(mode) == runs
    plan = plan_sweep(sweep, tmp_path / "out")
    (row,) = plan.counts()
    assert (row["grid"], row[MISSING], row["no_checkpoint"], row["no_data"]) == (runs, runs, runs, runs)
    units = plan.units(ready_only=False)
    assert len(units) == jobs
    assert plan.units() == []  # nothing can start: no checkpoint on disk
    if mode == "linear":  # one job per (checkpoint, task) holds all five seeds
        assert {len(u.specs) for u in units} == {5}
        assert all(len({(s.task, s.checkpoint) for s in u.specs}) == 1 for u in units)


def test_resnet50_linear_sweep_matches_the_papers_published_configs():
    reference = PAPER_RESULTS / "linear_transfer_results.txt"
    if not reference.is_file():
        pytest.skip(f"{reference} not present")
    import pandas as pd

    published = pd.read_csv(reference)
    labels = {"Dense": "dense", "AC/DC": "acdc", "RigL ERK 1x": "rigl_erk1x", "RigL ERK 5x": "rigl_erk5x",
              "STR": "str", "WoodFisher": "woodfisher", "LTH-T": "lth_t"}
    expected = {(labels[m], round(s, 4)) for m, s in zip(published.model, published.sparsity, strict=True)}
    sweep = load_sweep("paper_resnet50_linear")
    assert {(c.method, round(c.sparsity, 4)) for c in sweep.checkpoints} == expected
    assert set(sweep.seeds["linear"]) == {int(s.split("_")[1]) for s in published.seed}


def test_dry_run_prints_counts_jobs_and_the_sbatch_script(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "none"))
    assert main(["sweep", "paper_resnet50_linear", "--dry-run", "--results", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"linear\s+1200\s+0\s+0\s+0\s+0\s+0\s+0\s+1200\s+1200\s+1200", out)
    assert "1200 run(s) in 240 job(s)" in out and "need at most 240 feature extraction(s)" in out
    assert "#SBATCH --array=0-239%64" in out and "#SBATCH --gpus-per-node=1" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing

    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({**yaml.safe_load(load_profile_text("default")), "max_array_size": 100,
                                     "array_parallelism": 20}))
    assert main(["sweep", "paper_resnet50_full", "--dry-run", "--profile", str(small), "--results",
                 str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"full\s+720\s", out) and "720 run(s) in 720 job(s)" in out
    # SLURM's %N throttles one array: the profile's 20 are split across the 8 arrays
    assert ("720 job(s) as 8 array(s) of 100, 100, 100, 100, 100, 100, 100, 20, at most 3 + 3 + 3 + 3 + 2 + 2 + 2 + 2 "
            "running at once") in out
    assert "#SBATCH --array=0-99%3" in out and "#SBATCH --time=1440" in out
    assert "all together: at most 20 job(s) running at once (array_parallelism 20 of profile small" in out


@pytest.mark.parametrize(("sizes", "total", "shares"), [
    ([240], 64, [64]),
    ([240, 720], 64, [32, 32]),
    ([5, 1000], 64, [5, 59]),  # a small array leaves what it cannot use to the others
    ([100, 100, 100], 10, [4, 3, 3]),  # the first submitted starts first and gets the remainder
    ([2, 3, 1], 2, [1, 1, 1]),  # more arrays than allowed: one each is the least SLURM can do
    ([], 64, []),
])
def test_array_parallelism_is_split_across_the_arrays_of_a_sweep(sizes, total, shares):
    assert split_parallelism(sizes, total) == shares
    assert sum(shares) <= max(total, len(sizes))


def load_profile_text(name: str) -> str:
    return (Path(__file__).parents[1] / "slurm" / f"{name}.yaml").read_text()


def test_sbatch_script_matches_the_golden_file():
    script = sbatch_preview(load_profile("example_site"), "full", 720, Path("/shared/results"), "paper")
    script = script.replace(sys.executable, "PYTHON")
    assert script == (GOLDEN / "sbatch_example_site_full.sh").read_text()


def test_linear_units_share_one_extraction_across_seeds_and_solvers(tmp_path):
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(1, 2, 3), full_seeds=(1, 2),
                                        solvers=("sgd", "lbfgs"))
    plan = plan_sweep(load_sweep(sweep_file), tmp_path / "out")
    assert not plan.unresolved and not plan.missing_data
    linear = [u for u in plan.units() if u.mode == "linear"]
    full = [u for u in plan.units() if u.mode == "full"]
    assert len(linear) == 2 and all(len(u.specs) == 6 for u in linear)  # 3 seeds x 2 solvers per checkpoint
    assert len(full) == 4 and all(len(u.specs) == 1 for u in full)
    keys = [s.run_key for s in plan.specs]
    assert len(keys) == len(set(keys)) == 2 * 6 + 2 * 2


def test_planning_marks_existing_records_done_and_packs_only_the_rest(tmp_path):
    sweep_file, _ = write_fixture_sweep(tmp_path)
    out = tmp_path / "out"
    plan = plan_sweep(load_sweep(sweep_file), out)
    done = plan.specs[0]
    write_completed(out, done)
    (out / "runs" / plan.specs[1].run_key).mkdir(parents=True)  # a directory without its record is not done
    (out / "runs" / plan.specs[2].run_key).mkdir(parents=True)  # nor one whose record is not a completed run
    (out / "runs" / plan.specs[2].run_key / "result.json").write_text('{"status": "completed"}')
    again = plan_sweep(load_sweep(sweep_file), out)
    assert again.states[done.run_key].state == "done"
    assert again.states[plan.specs[1].run_key].state == LOST  # started, gone without a record: run it again
    assert again.states[plan.specs[2].run_key].state == FAILED  # the reason: missing fields
    assert again.states[plan.specs[2].run_key].detail.startswith("missing fields: task, method")
    assert again.states[plan.specs[3].run_key].state == MISSING
    assert done not in [s for u in again.units() for s in u.specs]
    assert sum(len(u.specs) for u in again.units()) == len(plan.specs) - 2  # the failed one needs --retry-failed


@pytest.mark.parametrize(("edit", "message"), [
    ({"modes": ["linear", "probe"]}, "modes ['probe'] are not linear, full, estimate"),
    ({"tasks": ["cifar10", "imagenet"]}, "unknown task 'imagenet'"),
    ({"seeds": [1, 1]}, "without repeats"),
    ({"seeds": {"linear": [1]}}, "no entry for mode(s) ['full']"),
    ({"overrides": {"lr": "fast"}}, "bad value 'fast' for hyper-parameter lr"),
    ({"overrides": {"epochz": 3}}, "unknown hyper-parameter epochz"),
    ({"solvers": ["adam"]}, "solvers ['adam'] are not sgd or lbfgs"),
    ({"modes": ["linear", "full", "linear"]}, "modes lists linear more than once; list each once"),
    ({"solvers": ["sgd", "lbfgs", "sgd"]}, "solvers lists sgd more than once; list each once"),
    ({"checkpoints": [{"method": "acdc"}]}, "each checkpoint needs method and sparsity"),
    ({"checkpoints": [{"method": "acdc", "sparsity": "150%"}]}, "sparsity must be in [0, 1)"),
    ({"checkpoints": [{"method": "acdc", "sparsity": 90}]}, "sparsity 90 is ambiguous: write 0.9 or 90%"),
    ({"seedz": [1]}, "unknown key(s) seedz"),
    ({"tasks": []}, "'tasks' is missing or empty"),
])
def test_bad_sweeps_are_one_line_errors_naming_the_file(edit, message, tmp_path, capsys):
    sweep_file, _ = write_fixture_sweep(tmp_path)
    spec = {**yaml.safe_load(sweep_file.read_text()), **edit}
    sweep_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(TransferbenchError, match=re.escape(message)) as info:
        load_sweep(sweep_file)
    assert str(sweep_file) in str(info.value) and "\n" not in str(info.value)
    assert main(["sweep", str(sweep_file), "--dry-run", "--results", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


@pytest.mark.parametrize(("args", "message"), [
    (["sweep", "no_such_sweep", "--dry-run"], "unknown sweep 'no_such_sweep'"),
    (["sweep", "missing.yaml", "--dry-run"], "sweep file missing.yaml does not exist"),
    (["sweep", "mini", "--dry-run", "--profile", "nope"], "unknown profile 'nope' (--profile)"),
    (["status", "no_such_sweep"], "unknown sweep 'no_such_sweep'"),
    (["sweep", "mini", "--dry-run", "--profile", "missing.yaml"],
     "profile file missing.yaml does not exist (--profile)"),
])
def test_bad_sweep_names_and_profiles(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("kind", ["sweep", "profile"])
def test_invalid_yaml_names_the_file_and_line_for_sweeps_and_profiles(kind, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseeds: [1, 2\n")
    args = ["sweep", str(bad), "--dry-run"] if kind == "sweep" else ["sweep", "mini", "--dry-run", "--profile",
                                                                     str(bad)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"error: {kind} {bad} is not valid YAML (line 3): fix the file\n"


def test_bad_profile_values(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text("partition: gpu\ntime_min: {linear: 10}\n")
    with pytest.raises(TransferbenchError, match="time_min needs a value for each of linear and full"):
        load_profile(bad)
    bad.write_text("partitoin: gpu\n")
    assert main(["sweep", "mini", "--dry-run", "--profile", str(bad)]) == 2
    assert "unknown key(s) partitoin" in capsys.readouterr().err


def test_a_setup_string_is_one_line_of_the_script(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("setup: source /shared/venv/bin/activate\n")
    profile = load_profile(path)
    assert profile.setup == ("source /shared/venv/bin/activate",)
    script = sbatch_preview(profile, "linear", 4, tmp_path, "s")
    assert "\nsource /shared/venv/bin/activate\n" in script and "\ns\no\nu\n" not in script


@pytest.mark.parametrize(("text", "message"), [
    ("sbatch: gres=gpu:1", "sbatch must be a mapping of #SBATCH option: value"),
    ("sbatch: [gres, gpu]", "sbatch must be a mapping of #SBATCH option: value"),
    ("sbatch: {gres: [gpu, 1]}", "sbatch option(s) ['gres'] need a name and one value each"),
    ("account: 0042", 'account must be a string, got 34; put the value in quotes in the file'),
    ("exclude: [node1, node2]", "exclude must be a string, got ['node1', 'node2']"),
    ("partition: {name: gpu}", "partition must be a string"),
    ("qos: true", "qos must be a string, got True"),
    ("constraint: 3", "constraint must be a string"),
    ("setup: [module load cuda, {a: 1}]", "setup must be a shell line or a list of them"),
    ("sbatch: {gres: null}", "sbatch option(s) ['gres'] have no value (null or false)"),
    ("sbatch: {requeue: false}", "sbatch option(s) ['requeue'] have no value (null or false)"),
    ("gpus_per_node: true", "gpus_per_node must be a whole number, got True"),
    ("cpus_per_task: 2.7", "cpus_per_task must be a whole number, got 2.7"),
    ("max_requeues: '3'", "max_requeues must be a whole number, got '3'"),
    ("time_min: {linear: 1.5, full: 60}", "time_min linear must be a whole number, got 1.5"),
    ("time_min: .inf", "time_min linear must be a whole number, got inf"),
    ("mem_gb: true", "mem_gb must be a positive number, got True"),
    ("gpus_per_node: -1", "gpus_per_node must be 0 or more"),
    ("max_requeues: -2", "max_requeues must be 0 or more"),
])
def test_profile_values_of_the_wrong_type_are_one_line_errors(text, message, tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(text + "\n")
    with pytest.raises(TransferbenchError, match=re.escape(message)):
        load_profile(path)
    assert main(["sweep", "mini", "--dry-run", "--profile", str(path), "--results", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: profile {path}: ") and err.count("\n") == 1


def test_profile_numbers_and_sbatch_flags_that_are_fine(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("cpus_per_task: 4.0\ngpus_per_node: 0\nmax_requeues: 0\nmem_gb: 7.5\n"
                    "sbatch: {requeue: true, gres: 'gpu:a100:2'}\n")
    profile = load_profile(path)
    assert (profile.cpus_per_task, profile.gpus_per_node, profile.max_requeues, profile.mem_gb) == (4, 0, 0, 7.5)
    script = sbatch_preview(profile, "linear", 1, tmp_path, "s")
    assert "\n#SBATCH --requeue\n" in script and "\n#SBATCH --gres=gpu:a100:2\n" in script
    assert "--gpus-per-node" not in script  # gres alone asks for the GPUs


def _blocked_fixture_sweep(tmp_path):
    """The fixture sweep with cifar10's data gone: its jobs are not ready, digits' are."""
    sweep_file, data = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=(), tasks=("cifar10", "digits"))
    (data / "cifar10").rename(tmp_path / "cifar10_elsewhere")
    return sweep_file


def test_dry_run_with_only_ready_previews_the_ready_jobs(tmp_path, capsys):
    sweep_file = _blocked_fixture_sweep(tmp_path)
    args = ["sweep", str(sweep_file), "--dry-run", "--results", str(tmp_path / "o"), "--profile", "testcluster"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "4 run(s) in 4 job(s) (2 ready now)" in printed
    assert "linear: 4 job(s) as 1 array(s) of 4" in printed and "#SBATCH --array=0-3%2" in printed
    assert main([*args, "--only-ready"]) == 0  # what the same command without --dry-run submits
    printed = capsys.readouterr().out
    assert "linear: 2 job(s) as 1 array(s) of 2, at most 2 running at once" in printed
    assert "#SBATCH --array=0-1%2" in printed and "--array=0-3" not in printed


@pytest.mark.parametrize(("executor", "line"), [
    ("local", "linear: 2 job(s) as subprocesses here, at most 3 at once (--parallel)"),
    ("debug", "linear: 2 job(s) one after the other in this process"),
])
def test_dry_run_of_local_and_debug_shows_no_slurm_arrays(executor, line, tmp_path, capsys):
    sweep_file = _blocked_fixture_sweep(tmp_path)
    assert main(["sweep", str(sweep_file), "--dry-run", "--executor", executor, "--parallel", "3", "--only-ready",
                 "--results", str(tmp_path / "o"), "--profile", "testcluster"]) == 0
    printed = capsys.readouterr().out
    assert line in printed.splitlines()
    assert "array" not in printed and "running at once" not in printed and "#SBATCH" not in printed


def test_submission_refuses_missing_checkpoints_unless_only_ready(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "none"))
    assert main(["sweep", "paper_resnet50_linear", "--executor", "debug", "--results", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "20 checkpoint(s) missing and 12 task(s) without data" in err and "--only-ready" in err
    assert main(["sweep", "paper_resnet50_linear", "--executor", "debug", "--only-ready",
                 "--results", str(tmp_path / "o")]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_slurm_executor_without_srun_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    sweep_file, _ = write_fixture_sweep(tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["sweep", str(sweep_file), "--executor", "slurm", "--results", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "`srun` is not on PATH" in err and err.count("\n") == 1
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))  # an upstream job: the same line
    assert main(["upstream", "--method", "magnitude", "--sparsity", "0.5", "--recipe", str(write_tiny_recipe(tmp_path)),
                 "--executor", "slurm", "--profile", "example_site"]) == 2
    assert capsys.readouterr().err == err


# --- upstream entries: the stage before the transfer jobs ---

def _upstream_sweep(root: Path, upstream: list[dict], checkpoints: list[dict] | None = None) -> Path:
    """A digits sweep (no data needed) whose checkpoints come from ``upstream`` entries of the tiny recipe."""
    recipe = str(write_tiny_recipe(root))
    spec = {"name": "up", "upstream": [{"recipe": recipe, **entry} for entry in upstream], "tasks": ["digits"],
            "modes": ["linear"], "seeds": [21]}
    if checkpoints is not None:
        spec["checkpoints"] = checkpoints
    path = root / "up.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _register_product(root: Path, name: str, method: str, sparsity: float) -> None:
    """A registered checkpoint under the name an upstream unit gives it (as if its job had run)."""
    from fixtures_models import write_pruned_checkpoint

    from transferbench.checkpoints import CheckpointSpec, register_local

    path = root / f"{name}.pth"
    write_pruned_checkpoint(path, sparsity=sparsity)
    register_local(CheckpointSpec(name=name, method=method, sparsity=sparsity, arch="resnet_tiny",
                                  filename=path.name), path)


def test_dry_run_lists_the_upstream_stage_then_the_transfer_jobs_that_wait_for_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    sweep_file = _upstream_sweep(tmp_path, [{"method": "magnitude", "sparsity": ["50%", "80%"], "gpus": 4, "nodes": 2},
                                            {"method": "dense"}])
    out = tmp_path / "out"
    args = ["sweep", str(sweep_file), "--dry-run", "--results", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "upstream stage: 3 unit(s) (3 missing); 3 to submit first" in printed
    assert ("  train resnet_tiny_magnitude_50_tiny_s0 (magnitude 50% resnet_tiny (tiny recipe, shapes, seed 0)): one "
            "SLURM job, 2 node(s) x 2 process(es), 2 GPU(s) per node, 1440 min") in printed
    assert "  train resnet_tiny_dense_0_tiny_s0 (dense 0% resnet_tiny (tiny recipe, shapes, seed 0)): one SLURM " \
           "job, 1 node(s) x 1 process(es), 1 GPU(s) per node, 1440 min" in printed  # the default profile's size
    upstream_script, transfer_script = re.findall(r"^#!/bin/bash\n.*?^srun [^\n]*\n", printed, flags=re.M | re.S)
    for line in ("--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=2",
                 "--job-name=tb-upstream-resnet_tiny_magnitude_50_tiny_s0"):
        assert f"#SBATCH {line}\n" in upstream_script
    assert f"{out}/upstream/jobs/%j" in upstream_script and "--dependency" not in upstream_script
    assert "#SBATCH --dependency='afterok:<resnet_tiny_magnitude_50_tiny_s0>'\n" in transfer_script
    # every transfer run waits for the upstream stage, one array per upstream job it waits for
    assert re.search(r"linear\s+3\s+0\s+0\s+0\s+0\s+0\s+0\s+3\s+0\s+0\s+3\n", printed)
    assert "linear: 3 job(s) as 3 array(s) of 1, 1, 1" in printed
    assert not out.exists() and not (tmp_path / "ckpts").exists()  # a dry run writes nothing

    # one unit registered, one half-trained: nothing to submit for the first, the second resumes
    _register_product(tmp_path, "resnet_tiny_magnitude_50_tiny_s0", "magnitude", 0.5)
    state = tmp_path / "ckpts" / "upstream" / "work" / "resnet_tiny_magnitude_80_tiny_s0-0123456789ab"
    state.mkdir(parents=True)
    (state / "progress.json").write_text(json.dumps({"epoch": 1, "epochs": 2, "world_size": 4}))
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "upstream stage: 3 unit(s) (1 done, 1 unfinished, 1 missing); 2 to submit first" in printed
    assert "train resnet_tiny_magnitude_50_tiny_s0" not in printed
    assert re.search(r"linear\s+3\s+0\s+0\s+0\s+0\s+0\s+0\s+3\s+0\s+0\s+2\n", printed)  # 1 run needs no upstream
    assert main(["status", str(sweep_file), "--results", str(out), "--json"]) == 0
    rows = {r["unit"]: r for r in json.loads(capsys.readouterr().out)["upstream"]}
    assert [(r["state"], r["detail"]) for r in rows.values()] == [
        ("done", "registered"),
        ("unfinished", "epoch 1 of 2 (resume state, no job running it)"),
        ("missing", "")]


def test_checkpoints_are_bound_to_the_upstream_entry_that_makes_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    upstream = [{"method": "magnitude", "sparsity": "50%", "seed": [0, 1]},
                {"method": "cram", "sparsity": ["50%", "90%"]}]
    everything = load_sweep(_upstream_sweep(tmp_path, upstream))  # no checkpoints: transfer every product
    assert [(u.name, u.sparsities) for u in everything.upstream] == [
        ("resnet_tiny_magnitude_50_tiny_s0", (0.5,)), ("resnet_tiny_magnitude_50_tiny_s1", (0.5,)),
        ("resnet_tiny_cram_50-90_tiny_s0", (0.5, 0.9))]  # CrAM: one model, every candidate
    assert [e.upstream for e in everything.checkpoints] == [
        "resnet_tiny_magnitude_50_tiny_s0", "resnet_tiny_magnitude_50_tiny_s1", "resnet_tiny_cram_50_tiny_s0",
        "resnet_tiny_cram_90_tiny_s0"]
    switches = load_sweep(_upstream_sweep(tmp_path, [{"method": "acdc", "sparsity": "90%", "batch_size": 32,
                                                      "precision": "bf16", "channels_last": True}]))
    kwargs = switches.upstream[0].train_kwargs()  # what the job passes to train_upstream
    assert kwargs["batch_size"] == 32 and (kwargs["options"].precision, kwargs["options"].channels_last) == \
        ("bf16", True)
    chosen = load_sweep(_upstream_sweep(tmp_path, upstream, [{"method": "magnitude", "sparsity": 0.5, "seed": 1},
                                                             {"method": "cram", "sparsity": "90%"},
                                                             {"method": "dense", "sparsity": 0}]))
    assert [e.upstream for e in chosen.checkpoints] == ["resnet_tiny_magnitude_50_tiny_s1",
                                                        "resnet_tiny_cram_90_tiny_s0", None]  # dense: the registry's
    plan = plan_sweep(chosen, tmp_path / "out")
    assert [s.checkpoint.identity for s in plan.specs[:2]] == ["upstream:resnet_tiny_magnitude_50_tiny_s1",
                                                               "upstream:resnet_tiny_cram_90_tiny_s0"]
    assert all(plan.blocked(s) for s in plan.specs)  # nothing submitted the upstream units yet


@pytest.mark.parametrize(("upstream", "checkpoints", "message"), [
    ([{"sparsity": "90%"}], None, "each upstream entry needs a method"),
    ([{"method": "acdc", "sparsity": "90%", "epochs": 3}], None, "upstream 'acdc' has unknown key(s) epochs"),
    ([{"method": "acdc"}], None, "upstream 'acdc' needs a sparsity"),
    ([{"method": "acdc", "sparsity": "90%", "gpus": 3, "nodes": 2}], None, "gpus 3 do not split evenly over nodes 2"),
    ([{"method": "acdc", "sparsity": "90%", "gpus": 0}], None,
     "upstream 'acdc' gpus must be a whole number of 1 or more"),
    ([{"method": "acdc", "sparsity": "90%"}, {"method": "acdc", "sparsity": ["80%", "90%"]}], None,
     "make resnet_tiny_acdc_90_tiny_s0 more than once"),
    ([{"method": "snip", "sparsity": "90%"}], None, "upstream 'snip': "),
    ([{"method": "acdc", "sparsity": "90%", "precision": "fp8"}], None, "upstream 'acdc': --precision 'fp8'"),
    ([{"method": "acdc", "sparsity": "90%", "batch_size": 0}], None, "upstream 'acdc': --batch-size 0"),
    ([{"method": "acdc", "sparsity": "90%", "recipe": "nope"}], None, "upstream 'acdc':"),
    ([{"method": "acdc", "sparsity": "90%", "from": "cram_resnet50"}], None, "one-shot candidates of CrAM models"),
    ([{"method": "acdc", "sparsity": "90%", "seed": [0, 1]}], [{"method": "acdc", "sparsity": "90%"}],
     "is made by 2 upstream entries (resnet_tiny_acdc_90_tiny_s0, resnet_tiny_acdc_90_tiny_s1); add seed: or recipe:"),
    ([{"method": "acdc", "sparsity": "90%"}], [{"method": "acdc", "sparsity": "80%", "seed": 0}],
     "names a seed or recipe, but no upstream entry of the sweep makes it"),
])
def test_bad_upstream_entries_are_one_line_errors_naming_the_file(upstream, checkpoints, message, tmp_path, capsys):
    sweep_file = _upstream_sweep(tmp_path, upstream, checkpoints)
    with pytest.raises(TransferbenchError, match=re.escape(message)) as info:
        load_sweep(sweep_file)
    assert str(info.value).startswith(f"sweep {sweep_file}: ") and "\n" not in str(info.value)


def test_a_waiting_run_resolves_its_upstream_checkpoint_as_run_would(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    waiting = make_spec("digits", "linear", 0, CheckpointRef("gmp", 0.5, "resnet_tiny", "upstream:my_gmp_50"))
    with pytest.raises(TransferbenchError, match="checkpoint my_gmp_50 is not registered"):
        resolve_waiting((waiting,))
    path = tmp_path / "mine.pth"
    path.write_bytes(b"the identity reads the bytes, not the model")
    register_local(CheckpointSpec(name="my_gmp_50", method="gmp", sparsity=0.5, arch="resnet_tiny"), path)
    (resolved,) = resolve_waiting((waiting,))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = CheckpointRef("gmp", 0.5, "resnet_tiny", f"my_gmp_50@sha256:{digest}")
    assert resolved == replace(waiting, checkpoint=expected)
    assert resolved.checkpoint.path == str(path.resolve())
    assert resolved.checkpoint == resolve_checkpoint("gmp", 0.5, "resnet_tiny", None)
