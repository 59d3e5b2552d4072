"""The SLURM path with fake ``sbatch``/``squeue``/``scancel``/``srun`` on PATH (as submitit tests itself):
chunked arrays, per-mode resources, the ledger, idempotent resubmission, and jobs executed the way a
compute node runs them (``submitit.core.submission.process_job``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import submitit
import yaml
from fixtures_sweep import write_fixture_sweep, write_tiny_recipe, write_upstream_sweep

from transferbench.cli import main
from transferbench.dispatch import load_sweep, plan_sweep
from transferbench.dispatch.jobs import SweepJob

GOLDEN = Path(__file__).parent / "golden"

pytestmark = pytest.mark.slow

FAKE_SBATCH = r'''
import json, pathlib, re, sys
state = pathlib.Path(__file__).with_name("state")
state.mkdir(exist_ok=True)
counter = state / "next_id"
job_id = int(counter.read_text()) if counter.exists() else 12
warning = state / "warning"  # printed first, as sbatch does for a deprecated option or a site's notice
if warning.exists():
    print("sbatch: warning: " + warning.read_text().strip(), file=sys.stderr)
fail = state / "fail_at"  # "<job id>: <message>": the sbatch call that would get this id fails
if fail.exists() and fail.read_text().split(":")[0] == str(job_id):
    print("sbatch: error: " + fail.read_text().split(":", 1)[1].strip(), file=sys.stderr)
    print("sbatch: see the site's documentation", file=sys.stderr)
    sys.exit(1)
counter.write_text(str(job_id + 1))
script = pathlib.Path(sys.argv[-1]).read_text()
(state / f"sbatch_{job_id}.sh").write_text(script)
print(f"Submitted batch job {job_id}")
'''
FAKE_SQUEUE = r'''
import pathlib
listed = pathlib.Path(__file__).with_name("state") / "squeue"
print(listed.read_text() if listed.exists() else "", end="")
'''
FAKE_LOG = r'''
import pathlib, sys
with open(pathlib.Path(__file__).with_name("state") / "calls", "a") as f:
    f.write(pathlib.Path(sys.argv[0]).name + " " + " ".join(sys.argv[1:]) + "\n")
'''


FAKE_SACCT = FAKE_LOG + "print('Slurm accounting storage is disabled'); sys.exit(1)\n"  # as on many clusters


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Fake SLURM commands first on PATH; ``state/calls`` logs scancel, scontrol, srun and sacct calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("scancel", FAKE_LOG), ("srun", FAKE_LOG),
                       ("scontrol", FAKE_LOG), ("sacct", FAKE_SACCT)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    state = bin_dir / "state"
    yield state
    # the rule: status and sweep work from files, never from sacct (which many clusters lack)
    assert not [c for c in _calls(state) if c.startswith("sacct")], _calls(state)


def _calls(state: Path) -> list[str]:
    path = state / "calls"
    return path.read_text().splitlines() if path.exists() else []


def _profile(tmp_path: Path) -> Path:
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump({"gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 2, "max_array_size": 3,
                                    "array_parallelism": 4, "time_min": {"linear": 30, "full": 60},
                                    "setup": ["echo setup-line"]}))
    return path


def _ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "jobs" / "ledger.jsonl").read_text().splitlines()]


@contextlib.contextmanager
def _compute_node(job_id: str):
    """The environment srun gives a task; submitit's signal handlers are undone afterwards."""
    array, _, task = job_id.partition("_")
    array_env = {"SLURM_ARRAY_JOB_ID": array, "SLURM_ARRAY_TASK_ID": task} if task else {}
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": job_id.replace("_", "9"),  # array tasks: own numeric id
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS": "1",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "node1", **array_env}
    # submitit sets SUBMITIT_FOLDER; an upstream job exports torch.distributed's variables
    exported = ["SUBMITIT_FOLDER", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"]
    saved_env = {k: os.environ.get(k) for k in [*env, *exported]}
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM, signal.SIGCONT)}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)


def test_slurm_sweep_submits_chunked_arrays_and_jobs_complete_on_the_nodes(tmp_path, fake_slurm, capsys):
    from submitit.core.submission import process_job

    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21, 51), full_seeds=(21, 51), full_epochs=2)
    out = tmp_path / "out"
    args = ["sweep", str(sweep_file), "--profile", str(_profile(tmp_path)), "--results", str(out), "--workers", "0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "submitted 6 job(s) as array(s) 12, 13, 14" in printed

    scripts = {int(p.stem.split("_")[1]): p.read_text() for p in fake_slurm.glob("sbatch_*.sh")}
    assert sorted(scripts) == [12, 13, 14]
    # array_parallelism 4 split across the three submissions: 1 + 2 + the plain job
    assert "#SBATCH --array=0-1%1" in scripts[12] and "#SBATCH --time=30" in scripts[12]  # 2 linear units
    assert "#SBATCH --array=0-2%2" in scripts[13] and "#SBATCH --time=60" in scripts[13]  # 4 full units: 3 + 1
    assert "--array" not in scripts[14] and "#SBATCH --time=60" in scripts[14]
    assert all("echo setup-line" in s and "#SBATCH --signal=USR2@120" in s for s in scripts.values())
    assert all("--gpus-per-node" not in s for s in scripts.values())

    ledger = _ledger(out)
    assert [e["job_id"] for e in ledger] == ["12_0", "12_1", "13_0", "13_1", "13_2", "14"]
    plan = plan_sweep(load_sweep(sweep_file), out)
    assert sorted(k for e in ledger for k in e["run_keys"]) == sorted(s.run_key for s in plan.specs)
    assert [len(e["run_keys"]) for e in ledger] == [2, 2, 1, 1, 1, 1]  # linear seeds share a job

    # while squeue lists the jobs, everything is queued and a second sweep submits nothing
    (fake_slurm / "squeue").write_text("\n".join(e["job_id"] for e in ledger) + "\n")
    assert main(["status", str(sweep_file), "--results", str(out)]) == 0
    assert re.search(r"linear\s+4\s+0\s+0\s+4\s+0\s+0\s+0\s+0", capsys.readouterr().out)
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out and len(list(fake_slurm.glob("sbatch_*.sh"))) == 3

    # job 14 was cancelled before it started: squeue no longer lists it, so its run is missing and resubmitted
    (fake_slurm / "squeue").write_text("\n".join(e["job_id"] for e in ledger[:-1]) + "\n")
    assert main(["status", str(sweep_file), "--results", str(out)]) == 0
    assert f"lost {ledger[-1]['run_keys'][0]}: job 14 ended without a record" in capsys.readouterr().out
    assert main(args) == 0
    assert "to run: 1 run(s) in 1 job(s)" in capsys.readouterr().out
    assert _ledger(out)[-1]["job_id"] == "15" and _ledger(out)[-1]["run_keys"] == ledger[-1]["run_keys"]

    # the compute nodes run every job (the cancelled 14 never ran)
    for entry in _ledger(out):
        if entry["job_id"] == "14":
            continue
        with _compute_node(entry["job_id"]):
            process_job(Path(entry["stdout"]).parent)
    (fake_slurm / "squeue").write_text("")
    assert main(["status", str(sweep_file), "--results", str(out), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert [(t["mode"], t["done"], t["missing"]) for t in totals] == [("linear", 4, 0), ("full", 4, 0)]
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")]
    assert len(records) == 8
    assert {r["hardware"].get("slurm_job_id") for r in records} >= {"1290", "15"}  # SLURM_JOB_ID seen by the runs
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out


def _paths(entry: dict):
    from submitit.core.utils import JobPaths

    return JobPaths(Path(entry["stdout"]).parent.parent / "%j", job_id=entry["job_id"])


def _submitted_job(entry: dict):
    """What a compute node will run (a DelayedSubmission of a SweepJob), unpickled from the job folder."""
    from submitit.core.utils import DelayedSubmission

    return DelayedSubmission.load(_paths(entry).submitted_pickle)


@pytest.mark.parametrize(("flag", "workers"), [(None, 2), ("0", 0), ("5", 5)])
def test_workers_flag_wins_over_the_profile_under_slurm(flag, workers, tmp_path, fake_slurm, capsys):
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=())
    profile = tmp_path / "three_cores.yaml"
    profile.write_text(yaml.safe_dump({"gpus_per_node": 0, "cpus_per_task": 3}))  # profile's default: 2 workers
    out = tmp_path / "out"
    args = ["sweep", str(sweep_file), "--profile", str(profile), "--results", str(out)]
    assert main(args + (["--workers", flag] if flag else [])) == 0
    ledger = _ledger(out)
    assert len(ledger) == 2
    assert [_submitted_job(e).function.ctx.num_workers for e in ledger] == [workers, workers]


def test_a_failing_sbatch_is_one_line_naming_the_submission_and_what_was_submitted(tmp_path, fake_slurm, capsys):
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21, 51), full_seeds=(21, 51))
    out = tmp_path / "out"
    args = ["sweep", str(sweep_file), "--profile", str(_profile(tmp_path)), "--results", str(out)]
    fake_slurm.mkdir()
    (fake_slurm / "fail_at").write_text("13: Batch job submission failed: Job violates accounting/QOS policy\n")
    (fake_slurm / "warning").write_text("--mem is deprecated here, use --mem-per-gpu\n")
    assert main(args) == 2
    printed = capsys.readouterr().err
    err = printed.splitlines()[-1]  # after the log line of the array that went through
    assert "Traceback" not in printed and not any(line.startswith("sbatch: ") for line in printed.splitlines())
    assert "deprecated" not in err and "documentation" not in err  # the error line, not the ones around it
    assert err.startswith("error: sbatch failed on submission 2 of 3 (full, 3 job(s), first cifar10.dense0.")
    assert "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy" in err
    assert f"already submitted and recorded in {out / 'jobs' / 'ledger.jsonl'}: array(s) 12 (2 job(s))" in err
    assert [e["job_id"] for e in _ledger(out)] == ["12_0", "12_1"]  # the ledger holds exactly what was submitted

    # after the fix, the same command submits only the rest (array 12 is still queued)
    (fake_slurm / "fail_at").unlink()
    (fake_slurm / "squeue").write_text("12_0\n12_1\n")
    assert main(args) == 0
    assert "submitted 4 job(s) as array(s) 13, 14" in capsys.readouterr().out
    assert [e["job_id"] for e in _ledger(out)] == ["12_0", "12_1", "13_0", "13_1", "13_2", "14"]


def test_sbatch_missing_is_one_line_and_submits_nothing(tmp_path, fake_slurm, monkeypatch, capsys):
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=())
    (fake_slurm.parent / "sbatch").unlink()  # srun stays, so submitit's own check passes
    monkeypatch.setenv("PATH", str(fake_slurm.parent))  # and no real sbatch either
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--profile", str(_profile(tmp_path)), "--results", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sbatch failed on submission 1 of 1" in err
    assert "No such file or directory" in err and "nothing was submitted" in err
    assert _ledger(out) == []  # check_locking created the ledger; no job was recorded in it


def _preview_scripts(printed: str) -> list[str]:
    """The sbatch scripts a --dry-run prints (from the shebang to the srun line)."""
    return re.findall(r"^#!/bin/bash\n.*?^srun [^\n]*\n", printed, flags=re.M | re.S)


def test_the_submitted_sbatch_script_matches_the_golden_file_and_the_dry_run(tmp_path, fake_slurm, capsys):
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21, 51), full_seeds=(21,))
    out = tmp_path / "out"
    args = ["sweep", str(sweep_file), "--profile", "example_site", "--results", str(out)]
    assert main([*args, "--dry-run"]) == 0
    previews = _preview_scripts(capsys.readouterr().out)
    assert main(args) == 0
    submitted = [(fake_slurm / f"sbatch_{job_id}.sh").read_text() for job_id in (12, 13)]  # linear, full
    assert len(previews) == 2 and previews == submitted  # the dry run shows exactly what sbatch gets
    normalised = submitted[1].replace(str(out), "OUT").replace(sys.executable, "PYTHON")
    assert normalised == (GOLDEN / "sbatch_submitted_example_site_full.sh").read_text()


def test_a_time_out_requeues_until_max_requeues_runs_out_and_preemption_does_not_count(tmp_path, fake_slurm):
    """What submitit does on USR2 inside a job (its SignalHandler), on the job a sweep submitted."""
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import UncompletedJobError

    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(), full_seeds=(21,))
    profile = tmp_path / "requeues.yaml"
    profile.write_text(yaml.safe_dump({"gpus_per_node": 0, "cpus_per_task": 1, "max_requeues": 1, "time_min": 60}))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--profile", str(profile), "--results", str(out)]) == 0
    entry = _ledger(out)[0]
    assert entry["job_id"] == "12_0"
    assert _submitted_job(entry)._timeout_countdown == 1  # the profile's max_requeues, in the job's pickle

    def signal_usr2(timed_out: bool) -> None:
        delayed = _submitted_job(entry)  # each (re)start of the job reads the pickle its last checkpoint wrote
        with _compute_node(entry["job_id"]):
            handler = SignalHandler(submitit.JobEnvironment(), _paths(entry), delayed)
            handler.has_timed_out = lambda: timed_out  # instead of waiting 80% of 60 min
            handler.checkpoint_and_try_requeue(signal.SIGUSR2)

    requeues = lambda: [c for c in _calls(fake_slurm) if c.startswith("scontrol requeue")]  # noqa: E731
    with pytest.raises(SystemExit):  # the first time-out (max_requeues 1): checkpointed and requeued
        signal_usr2(timed_out=True)
    assert requeues() == ["scontrol requeue 12_0"] and _submitted_job(entry)._timeout_countdown == 0
    assert isinstance(_submitted_job(entry).function, SweepJob)  # the checkpoint is the same unit, to resume
    with pytest.raises(SystemExit):  # a preemption: requeued without using up a time-out
        signal_usr2(timed_out=False)
    assert len(requeues()) == 2 and _submitted_job(entry)._timeout_countdown == 0
    with pytest.raises(UncompletedJobError, match="timed-out too many times"):  # time-out 2: the end
        signal_usr2(timed_out=True)
    assert len(requeues()) == 2


# --- the upstream stage: upstream jobs first, transfer jobs after them (afterok) ---

UNIT = "resnet_tiny_magnitude_50_tiny_s0"


def _upstream_ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "upstream" / "jobs" / "ledger.jsonl").read_text().splitlines()]


def _upstream_row(capsys, sweep_file: Path, out: Path) -> dict:
    assert main(["status", str(sweep_file), "--results", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    (row,) = status["upstream"]
    return {**row, "runs": {r["method"]: r for r in status["runs"]}}


def test_a_sweep_submits_its_upstream_jobs_first_and_the_transfer_jobs_after_them(tmp_path, fake_slurm, capsys,
                                                                                   monkeypatch):
    from submitit.core.submission import process_job

    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    sweep_file, out = write_upstream_sweep(tmp_path), tmp_path / "out"
    args = ["sweep", str(sweep_file), "--profile", str(_profile(tmp_path)), "--results", str(out), "--workers", "0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"upstream stage: submitted {UNIT} as job 12" in printed
    assert "submitted 2 job(s) as array(s) 13, 14" in printed  # the dense file's job waits for nothing
    scripts = {int(p.stem.split("_")[1]): p.read_text() for p in fake_slurm.glob("sbatch_*.sh")}
    assert sorted(scripts) == [12, 13, 14]
    assert f"#SBATCH --job-name=tb-upstream-{UNIT}" in scripts[12] and "#SBATCH --nodes=1" in scripts[12]
    assert "#SBATCH --ntasks-per-node=1" in scripts[12] and "#SBATCH --time=60" in scripts[12]  # time_min full
    assert "--dependency" not in scripts[12] + scripts[13]
    assert "#SBATCH --dependency=afterok:12" in scripts[14] and "#SBATCH --kill-on-invalid-dep=yes" in scripts[14]
    assert [(e["unit"], e["job_id"], e["mode"]) for e in _upstream_ledger(out)] == [(UNIT, "12", "upstream")]
    assert [(e["job_id"], e.get("after")) for e in _ledger(out)] == [("13", None), ("14", ["12"])]

    # all three queued: status shows both stages, and the same command submits nothing
    (fake_slurm / "squeue").write_text("12\n13\n14\n")
    row = _upstream_row(capsys, sweep_file, out)
    assert (row["unit"], row["state"], row["detail"], row["runs"]["magnitude"]["state"]) == \
        (UNIT, "queued", "job 12", "queued")
    assert main(["status", str(sweep_file), "--results", str(out)]) == 0
    assert re.search(rf"upstream stage \(1 unit\(s\)\):\n.*\n.*\n{UNIT}\s+magnitude\s+50%\s+0\s+tiny\s+queued\s+job 12",
                     capsys.readouterr().out)
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out and len(list(fake_slurm.glob("sbatch_*.sh"))) == 3

    # the upstream job runs: its checkpoint is registered, and the transfer job that waited for it is still queued
    # under the key it was submitted with (the checkpoint's digest was not known then)
    with _compute_node("12"):
        process_job(out / "upstream" / "jobs" / "12")
    (fake_slurm / "squeue").write_text("13\n14\n")
    row = _upstream_row(capsys, sweep_file, out)
    assert (row["state"], row["detail"]) == ("done", "registered")
    magnitude = row["runs"]["magnitude"]
    assert (magnitude["state"], magnitude["job_id"]) == ("queued", "14")
    assert magnitude["detail"] == "job 14 (submitted before its checkpoint existed)"
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out and len(list(fake_slurm.glob("sbatch_*.sh"))) == 3

    # the transfer jobs run: the waiting one finds the registered checkpoint; a third sweep submits nothing
    for job_id in ("13", "14"):
        with _compute_node(job_id):
            process_job(out / "jobs" / job_id)
    (fake_slurm / "squeue").write_text("")
    row = _upstream_row(capsys, sweep_file, out)
    assert {m: r["state"] for m, r in row["runs"].items()} == {"dense": "done", "magnitude": "done"}
    record = json.loads((out / "runs" / row["runs"]["magnitude"]["run_key"] / "result.json").read_text())
    assert record["checkpoint"]["identity"].startswith(f"{UNIT}@sha256:")
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out and len(list(fake_slurm.glob("sbatch_*.sh"))) == 3


def test_a_failed_upstream_job_blocks_its_transfer_jobs_until_it_is_retried(tmp_path, fake_slurm, capsys,
                                                                            monkeypatch):
    from submitit.core.submission import process_job

    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    # ImageNet without its folder: the upstream job fails at once
    sweep_file = write_upstream_sweep(tmp_path, dataset="imagenet", data_root=str(tmp_path / "no_imagenet"))
    out = tmp_path / "out"
    args = ["sweep", str(sweep_file), "--profile", str(_profile(tmp_path)), "--results", str(out), "--workers", "0"]
    assert main(args) == 0
    capsys.readouterr()
    with _compute_node("12"), pytest.raises(Exception, match="needs --data-root"):
        process_job(out / "upstream" / "jobs" / "12")
    (fake_slurm / "squeue").write_text("13\n")  # SLURM cancelled job 14 (kill-on-invalid-dep)
    row = _upstream_row(capsys, sweep_file, out)
    assert row["state"] == "failed" and "needs --data-root" in row["detail"] and row["job_id"] == "12"
    assert row["runs"]["magnitude"]["state"] == "lost"

    assert main(args) == 2  # the lost transfer job cannot be resubmitted: nobody makes its checkpoint
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 job(s) waiting for the upstream stage" in err
    assert f"needs {UNIT}, whose upstream unit is failed: " in err and "--only-ready" in err
    assert len(list(fake_slurm.glob("sbatch_*.sh"))) == 3

    assert main([*args, "--retry-failed"]) == 0  # the upstream unit again (its transfer run is lost, not failed)
    assert f"upstream stage: submitted {UNIT} as job 15" in capsys.readouterr().out
    (fake_slurm / "squeue").write_text("13\n15\n")
    assert main(args) == 0  # and the transfer job after it
    assert "#SBATCH --dependency=afterok:15" in (fake_slurm / "sbatch_16.sh").read_text()


def _gpu_profile(tmp_path: Path) -> Path:
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({"gpus_per_node": 1, "cpus_per_task": 6, "mem_gb": 32, "time_min": 600,
                                    "max_requeues": 2, "upstream": {"mem_gb": 400, "time_min": 2880}}))
    return path


def test_upstream_on_slurm_is_one_requeueable_job_of_one_process_per_gpu(tmp_path, fake_slurm, capsys, monkeypatch):
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission, JobPaths

    from transferbench.dispatch.upstream_jobs import UpstreamJob

    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    args = ["upstream", "--method", "acdc", "--sparsity", "0.9", "--dataset", "imagenet", "--data-root",
            str(tmp_path / "imagenet"), "--recipe", str(write_tiny_recipe(tmp_path)), "--executor", "slurm",
            "--profile", str(_gpu_profile(tmp_path)), "--gpus", "4", "--nodes", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "submitted upstream job 12: acdc 90% resnet_tiny (tiny recipe, imagenet, seed 0), 2 node(s) x 2 " \
           "process(es), 2 GPU(s) per node, 2880 min" in printed
    script = (fake_slurm / "sbatch_12.sh").read_text()
    for line in ("--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=6", "--mem=400GB",
                 "--time=2880", "--signal=USR2@120", "--job-name=tb-upstream-resnet_tiny_acdc_90_tiny_s0"):
        assert f"#SBATCH {line}\n" in script
    assert "--array" not in script and "--dependency" not in script
    store = tmp_path / "ckpts" / "upstream"
    assert [(e["unit"], e["job_id"], e["nodes"], e["tasks_per_node"], e["gpus_per_node"])
            for e in _upstream_ledger(tmp_path / "ckpts")] == [("resnet_tiny_acdc_90_tiny_s0", "12", 2, 2, 2)]

    # what every task runs: the unit as a Checkpointable, whose checkpoint resubmits itself
    paths = JobPaths(store / "jobs" / "%j", job_id="12")
    delayed = DelayedSubmission.load(paths.submitted_pickle)
    job = delayed.function
    assert isinstance(job, UpstreamJob) and job.unit.name == "resnet_tiny_acdc_90_tiny_s0"
    assert job.unit.train_kwargs()["data_root"] == tmp_path / "imagenet" and delayed._timeout_countdown == 2
    assert job.checkpoint().function is job
    with _compute_node("12"):  # SLURM's USR2 before the time limit: checkpointed and requeued by submitit
        handler = SignalHandler(submitit.JobEnvironment(), paths, delayed)
        handler.has_timed_out = lambda: True
        with pytest.raises(SystemExit):
            handler.checkpoint_and_try_requeue(signal.SIGUSR2)
    assert [c for c in _calls(fake_slurm) if c.startswith("scontrol")] == ["scontrol requeue 12"]
    assert isinstance(DelayedSubmission.load(paths.submitted_pickle).function, UpstreamJob)

    # the same command while the job is queued submits nothing
    (fake_slurm / "squeue").write_text("12\n")
    assert main(args) == 0
    assert "resnet_tiny_acdc_90_tiny_s0: queued (job 12); nothing submitted" in capsys.readouterr().out
    assert sorted(p.name for p in fake_slurm.glob("sbatch_*.sh")) == ["sbatch_12.sh"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--executor", "slurm", "--profile", "GPU", "--gpus", "3", "--nodes", "2"],
     "error: --gpus/--nodes: 3 GPU(s) do not split evenly over 2 node(s)"),
    (["--executor", "slurm", "--gpus", "4"], "error: --executor slurm needs --profile NAME|FILE"),
    (["--gpus", "4", "--profile", "GPU"], "error: --gpus, --nodes and --profile size a SLURM job: add --executor"),
    (["--executor", "slurm", "--profile", "GPU", "--gpus", "0"], "nodes and GPUs must be 1 or more"),
    (["--executor", "slurm", "--profile", "default", "--force"], "error: --force with --executor slurm"),
    (["--executor", "slurm", "--profile", "testcluster", "--gpus", "2"], "profile testcluster has no GPUs"),
])
def test_bad_upstream_launch_flags_are_one_line_and_submit_nothing(flags, message, tmp_path, fake_slurm, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    flags = [str(_gpu_profile(tmp_path)) if f == "GPU" else f for f in flags]
    assert main(["upstream", "--method", "acdc", "--sparsity", "0.9", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not list(fake_slurm.glob("sbatch_*.sh")) and not (tmp_path / "ckpts").exists()
