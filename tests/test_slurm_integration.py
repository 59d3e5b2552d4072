"""A sweep on a real single-node SLURM (Debian slurmctld/slurmd 22.05 started by slurm/testcluster.sh):
arrays, one job interrupted mid-run with `scancel --signal USR2` (checkpointed and requeued by submitit),
every record complete and equal to an uninterrupted run's, and a second sweep that does nothing; and a GPU job that
SLURM gives one of the test cluster's fake GPUs (gres).

CI installs SLURM (.ci/run) and sets TRANSFERBENCH_REQUIRE_SLURM=1, so there this test cannot be skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures_sweep import write_fixture_sweep

from transferbench.cli import main
from transferbench.context import RunContext
from transferbench.dispatch import load_sweep, plan_sweep
from transferbench.runner import run
from transferbench.store import DONE

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parents[1] / "slurm" / "testcluster.sh"
BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo")


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        message = (f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd "
                   "slurm-client")
        if os.environ.get("TRANSFERBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, PATH=f"{os.environ['PATH']}:/usr/sbin")
    started = subprocess.run([str(SCRIPT), "start", str(folder), str(os.cpu_count() or 2)], env=env,
                             capture_output=True, text=True, timeout=90)
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip()
    subprocess.run([str(SCRIPT), "stop", str(folder)], env=env, timeout=60)


def _wait(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_sweep_on_a_real_slurm_survives_an_interruption_and_resubmits_nothing(slurm_conf, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    sweep_file, data = write_fixture_sweep(tmp_path, linear_seeds=(21, 51), full_seeds=(21, 51), full_epochs=20)
    out = tmp_path / "out"
    args = ["sweep", str(sweep_file), "--executor", "slurm", "--profile", "testcluster", "--results", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "8 run(s) in 6 job(s)" in printed and "submitted 6 job(s) as array(s)" in printed
    ledger = [json.loads(line) for line in (out / "jobs" / "ledger.jsonl").read_text().splitlines()]
    assert [len(e["run_keys"]) for e in ledger] == [2, 2, 1, 1, 1, 1]
    assert all("_" in e["job_id"] for e in ledger)  # array tasks

    # interrupt the first full fine-tuning job once it has saved an epoch
    victim = next(e for e in ledger if e["mode"] == "full")
    (key,) = victim["run_keys"]
    _wait(lambda: (out / "work" / key / "train_state.pt").exists(), 240, f"job {victim['job_id']} to save an epoch",
          poll=0.05)
    # What SLURM sends before a time limit (--signal=USR2@N) or a preemption. scancel may keep retrying with
    # "Job can not be altered now" once the job is requeuing, so it is stopped when the job has the signal.
    scancel = subprocess.Popen(["scancel", "--signal=USR2", victim["job_id"]])
    _wait(lambda: "SIGUSR2" in Path(victim["stderr"]).read_text(errors="replace"), 60, "the job to get USR2")
    if scancel.poll() is None:
        scancel.kill()
    scancel.wait()

    plan = plan_sweep(load_sweep(sweep_file), out)
    keys = [s.run_key for s in plan.specs]

    def all_done():
        states = plan_sweep(load_sweep(sweep_file), out).states
        return all(states[k].state == DONE for k in keys)

    _wait(all_done, 420, "every run of the sweep to complete", poll=1.0)
    _wait(lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip(), 60,
          "the queue to drain")

    records = {k: json.loads((out / "runs" / k / "result.json").read_text()) for k in keys}
    assert all(r["status"] == "completed" and (out / "runs" / k / "predictions.npz").exists()
               for k, r in records.items())
    assert not list(out.glob("failures/*")) and not list(out.glob("work/*/claim.json"))
    interrupted = records[key]
    assert interrupted["timings"]["resumed_from_epoch"] >= 1  # it went on from its saved epoch
    assert interrupted["hardware"]["slurm_restart_count"] == "1"  # after one requeue by submitit
    assert interrupted["hardware"]["slurm_array_job_id"] == victim["job_id"].split("_")[0]
    assert all(r["hardware"]["torch_threads"] == 1 for r in records.values())  # the profile's cpus_per_task

    # the interrupted run equals an uninterrupted one of the same spec (on as many threads: float sums differ)
    spec = next(s for s in plan.specs if s.run_key == key)
    reference_out = tmp_path / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(interrupted["hardware"]["torch_threads"])
    try:
        run(spec, RunContext(results=reference_out, data_root=data, num_workers=0))
    finally:
        torch.set_num_threads(threads)
    reference = json.loads((reference_out / "runs" / key / "result.json").read_text())
    assert interrupted["metrics"] == reference["metrics"]
    assert interrupted["curve"] == reference["curve"]
    assert interrupted["sparsity"] == reference["sparsity"]
    np.testing.assert_array_equal(np.load(out / "runs" / key / "predictions.npz")["logits"],
                                  np.load(reference_out / "runs" / key / "predictions.npz")["logits"])

    # a second sweep is a no-op: nothing submitted, nothing rewritten
    mtimes = {k: (out / "runs" / k / "result.json").stat().st_mtime_ns for k in keys}
    capsys.readouterr()
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len((out / "jobs" / "ledger.jsonl").read_text().splitlines()) == len(ledger)
    assert mtimes == {k: (out / "runs" / k / "result.json").stat().st_mtime_ns for k in keys}
    assert main(["status", str(sweep_file), "--results", str(out), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert [(t["mode"], t["done"], t["grid"]) for t in totals] == [("linear", 4, 4), ("full", 4, 4)]


def test_a_gpu_job_is_given_a_gpu_by_slurms_gres(slurm_conf, tmp_path, monkeypatch, capsys):
    """--gpus-per-node reaches a real slurmctld, which allocates one of the test cluster's fake GPUs (gres); the
    job then runs on the CPU, as torch finds no driver behind the fake device."""
    if os.geteuid() != 0:
        pytest.skip("the test cluster has fake GPUs only when started as root (mknod)")
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    profile = yaml.safe_load((SCRIPT.parent / "testcluster.yaml").read_text())
    profile.update(gpus_per_node=1, setup=['echo "allocated GPU: ${CUDA_VISIBLE_DEVICES:-none}"'])
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(profile))
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=())
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--executor", "slurm", "--profile", str(tmp_path / "gpu.yaml"),
                 "--results", str(out)]) == 0
    ledger = [json.loads(line) for line in (out / "jobs" / "ledger.jsonl").read_text().splitlines()]
    keys = [k for e in ledger for k in e["run_keys"]]
    _wait(lambda: all((out / "runs" / k / "result.json").exists() for k in keys), 240, "the GPU jobs to finish",
          poll=0.5)
    for entry in ledger:
        log = Path(entry["stdout"]).read_text()
        assert "allocated GPU: 0" in log or "allocated GPU: 1" in log, log
    assert all(json.loads((out / "runs" / k / "result.json").read_text())["config"]["device"] == "cpu" for k in keys)


def test_an_upstream_entry_trains_on_two_processes_before_the_transfer_job_that_waits_for_it(slurm_conf, tmp_path,
                                                                                              monkeypatch, capsys):
    """A sweep's upstream unit as one SLURM job of two tasks (DDP over gloo, started by submitit's srun), and the
    transfer job that needs its checkpoint submitted at once with afterok: it can only succeed after the upstream
    job registered the checkpoint."""
    from transferbench.checkpoints import list_checkpoints
    from transferbench.upstream import load_recipe

    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))  # the jobs inherit it (--export=ALL)
    recipe = load_recipe("small_cpu")
    recipe.update(name="tiny", train_size=256, test_size=64, batch_size=64, epochs=2)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=())
    spec = yaml.safe_load(sweep_file.read_text())
    spec["upstream"] = [{"method": "magnitude", "sparsity": "50%", "recipe": str(tmp_path / "tiny.yaml")}]
    spec["checkpoints"] = [{"method": "magnitude", "sparsity": "50%"}]
    sweep_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    profile = yaml.safe_load((SCRIPT.parent / "testcluster.yaml").read_text())
    profile.update(gpus_per_node=0, upstream={"tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 2})
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(profile))
    out = tmp_path / "out"
    args = ["sweep", str(sweep_file), "--executor", "slurm", "--profile", str(tmp_path / "two.yaml"), "--results",
            str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    upstream_job = re.search(r"upstream stage: submitted resnet_tiny_magnitude_50_tiny_s0 as job (\d+)", printed)[1]
    ledger = [json.loads(line) for line in (out / "jobs" / "ledger.jsonl").read_text().splitlines()]
    assert [e["after"] for e in ledger] == [[upstream_job]]

    keys = ledger[0]["run_keys"]
    _wait(lambda: all(state.state == DONE for state in plan_sweep(load_sweep(sweep_file), out).states.values()),
          420, "the upstream job and then the transfer job to complete", poll=1.0)
    plan = plan_sweep(load_sweep(sweep_file), out)
    assert plan.upstream.states["resnet_tiny_magnitude_50_tiny_s0"].state == DONE
    [record] = [json.loads((out / "runs" / s.run_key / "result.json").read_text()) for s in plan.specs]
    assert record["checkpoint"]["identity"].startswith("resnet_tiny_magnitude_50_tiny_s0@sha256:")
    assert record["run_key"] != keys[0]  # submitted under the placeholder, recorded under the real key
    [spec_row] = [s for s in list_checkpoints() if s.name == "resnet_tiny_magnitude_50_tiny_s0"]  # registered once
    metadata = torch.load(spec_row.path, map_location="cpu", weights_only=True)["metadata"]
    assert metadata["training"]["world_size"] == 2, metadata  # both tasks trained it
    upstream_log = next((out / "upstream" / "jobs" / upstream_job).glob("*_1_log.err")).read_text()
    assert "process 1 of 2" in upstream_log  # the second task's log

    _wait(lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip(), 60,
          "the queue to drain")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and "upstream stage: submitted" not in printed


def test_an_upstream_job_interrupted_by_usr2_is_requeued_and_resumes_from_its_last_epoch(slurm_conf, tmp_path,
                                                                                         monkeypatch, capsys):
    """`transferbench upstream --executor slurm`: two gloo processes; USR2 (what SLURM sends before a time limit
    or a preemption) once an epoch is saved; submitit requeues the job, which resumes and registers once."""
    from transferbench.checkpoints import list_checkpoints
    from transferbench.upstream import load_recipe

    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    recipe = load_recipe("small_cpu")
    recipe.update(name="tiny", train_size=512, test_size=64, batch_size=64, epochs=6)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    profile = yaml.safe_load((SCRIPT.parent / "testcluster.yaml").read_text())
    profile.update(gpus_per_node=0, upstream={"tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 2})
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(profile))
    args = ["upstream", "--method", "magnitude", "--sparsity", "0.5", "--recipe", str(tmp_path / "tiny.yaml"),
            "--executor", "slurm", "--profile", str(tmp_path / "two.yaml")]
    assert main(args) == 0
    job_id = re.search(r"submitted upstream job (\d+)", capsys.readouterr().out)[1]
    store = tmp_path / "ckpts" / "upstream"
    _wait(lambda: any(json.loads(p.read_text())["epoch"] >= 1 for p in store.glob("work/*/progress.json")), 240,
          "the job to save an epoch", poll=0.1)
    scancel = subprocess.Popen(["scancel", "--signal=USR2", job_id])
    log = store / "jobs" / job_id / f"{job_id}_0_log.err"
    _wait(lambda: "SIGUSR2" in log.read_text(errors="replace"), 60, "the job to get USR2")
    if scancel.poll() is None:
        scancel.kill()
    scancel.wait()
    name = "resnet_tiny_magnitude_50_tiny_s0"
    _wait(lambda: any(s.name == name for s in list_checkpoints()), 420, "the requeued job to register", poll=1.0)
    [spec] = [s for s in list_checkpoints() if s.name == name]  # registered once
    training = torch.load(spec.path, map_location="cpu", weights_only=True)["metadata"]["training"]
    assert training["world_size"] == 2 and training["resumed_from_epoch"] >= 1, training
    assert "Requeued" in log.read_text(errors="replace") or "requeue" in log.read_text(errors="replace").lower()
    _wait(lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip(), 60,
          "the queue to drain")
    assert main(args) == 0
    assert f"{name}: done (registered); nothing submitted" in capsys.readouterr().out
