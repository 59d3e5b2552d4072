"""Experiment-tracker logging (`--log wandb|tensorboard|mlflow`), offline: W&B in offline mode (its .wandb file
read back record by record), TensorBoard event files (read back by TensorBoard's EventAccumulator), a local MLflow
file store (read back by MLflow's client). What a tracker shows must be what the run's record says: the same
curve points, the same final metrics; and logging must change no number and no run key."""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from fixtures_data import write_task
from fixtures_models import write_pruned_checkpoint
from fixtures_sweep import write_upstream_sweep

from transferbench import tracking
from transferbench.cli import build_parser, main
from transferbench.tracking import BACKENDS, Backend, log_curve, track

INSTALLED = [name for name, backend in BACKENDS.items() if importlib.util.find_spec(backend.module) is not None]


def needs(name: str):
    return pytest.mark.skipif(name not in INSTALLED,
                              reason=f"{name} is not installed (pip install 'transferbench[{name}]'; CI installs it "
                                     "with the dev extra)")


# a hand-made curve: evaluated at epochs 1 and 2 only, as a run with eval_every would be
CURVE = [{"epoch": 0, "lr": 0.1, "train_loss": 2.0},
         {"epoch": 1, "lr": 0.01, "train_loss": 1.5, "top1": 0.25, "mean_per_class_acc": 0.125},
         {"epoch": 2, "lr": 0.001, "train_loss": 1.25, "top1": 0.5, "mean_per_class_acc": 0.375}]
SUMMARY = {"top1": 0.5, "best_epoch": 2, "best_top1": 0.5, "solver": "sgd"}  # a string is not a metric
CONFIG = {"run_key": "k", "task": "cifar10", "hparams": {"lr": 0.1, "lr_decay_after": [50, 100]}}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Every backend writes under tmp_path and nowhere else: W&B offline, MLflow's file store."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for name in ("WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "wandb_dir").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses the file store unless asked
    return tmp_path


# --- readers: each backend's files read back by the backend's own code ---


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def wandb_runs(wandb_dir: Path) -> list[dict]:
    """Each offline run's name, config, history rows, summary and exit code, from its .wandb file: a LevelDB-style
    log of W&B's own protobuf ``Record`` messages (32 KiB blocks, a 7-byte header per chunk)."""
    from wandb.proto import wandb_internal_pb2

    runs = []
    for path in sorted(glob.glob(str(wandb_dir / "wandb" / "offline-run-*" / "*.wandb"))):
        run: dict = {"history": [], "summary": {}}
        for raw in _leveldb_records(Path(path).read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["name"] = record.run.display_name
                run["project"] = record.run.project
                run["config"] = {i.key: json.loads(i.value_json) for i in record.run.config.update}
            elif kind == "history":
                run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
            elif kind == "summary":
                run["summary"].update({i.key: json.loads(i.value_json) for i in record.summary.update if i.key})
            elif kind == "exit":
                run["exit_code"] = record.exit.exit_code
        runs.append(run)
    return runs


def finished_wandb_runs(wandb_dir: Path, count: int, timeout_s: float = 60.0) -> list[dict]:
    """``wandb_runs`` once ``count`` runs have their run and exit records: W&B's service process writes the .wandb
    files after ``finish()`` returns, so a file read at once may not hold them yet (seen once in a full suite)."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = wandb_runs(wandb_dir)
        if len(runs) == count and all("name" in run and "exit_code" in run for run in runs):
            return runs
        if time.monotonic() > deadline:
            return runs  # the assertions after say what is missing
        time.sleep(0.2)


def _leveldb_records(data: bytes, block: int = 32768) -> list[bytes]:
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the block's end
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(pending)
            pending = b""
    return records


def mlflow_runs(tmp_path: Path) -> dict[str, dict]:
    """Each run of the file store by name: status, params, and every metric's history as {step: value}."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    experiment = client.get_experiment_by_name("transferbench")
    runs = {}
    for run in client.search_runs([experiment.experiment_id]):
        runs[run.info.run_name] = {
            "status": run.info.status, "params": run.data.params,
            "metrics": {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                        for key in run.data.metrics}}
    return runs


def _curve_of(points: list[dict], key: str) -> dict[int, float]:
    return {p["epoch"]: p[key] for p in points if key in p}


# --- each backend alone, with a hand-made curve ---


@needs("tensorboard")
def test_tensorboard_event_files_hold_every_point_and_the_final_metrics(offline):
    log_curve(["tensorboard"], "k", CONFIG, offline, CURVE, SUMMARY)
    scalars = tensorboard_scalars(offline / "tensorboard" / "k")
    for key in ("lr", "train_loss", "top1", "mean_per_class_acc"):
        assert scalars[key] == pytest.approx(_curve_of(CURVE, key)), key  # float32 in the event file
    assert scalars["final/top1"] == {2: 0.5} and scalars["final/best_epoch"] == {2: 2.0}
    assert "epoch" not in scalars and "final/solver" not in scalars  # the step, and a string: not metrics


@needs("mlflow")
def test_mlflow_file_store_holds_every_point_the_config_and_the_status(offline):
    log_curve(["mlflow"], "k", CONFIG, offline, CURVE, SUMMARY)
    with pytest.raises(RuntimeError), track(["mlflow"], "broken", CONFIG, offline) as tracked:
        tracked.log_point(CURVE[0])
        raise RuntimeError("diverged")
    runs = mlflow_runs(offline)
    assert runs["k"]["status"] == "FINISHED" and runs["broken"]["status"] == "FAILED"
    metrics = runs["k"]["metrics"]
    for key in ("lr", "train_loss", "mean_per_class_acc"):
        assert metrics[key] == _curve_of(CURVE, key), key  # MLflow keeps float64: exact
    assert metrics["top1"] == {1: 0.25, 2: 0.5}  # the final top1 logged at the last step: the same value
    assert metrics["best_top1"] == {2: 0.5} and "solver" not in metrics
    assert runs["k"]["params"] == {"run_key": "k", "task": "cifar10", "hparams.lr": "0.1",
                                   "hparams.lr_decay_after": "[50, 100]"}


@needs("wandb")
def test_wandb_offline_run_holds_every_point_and_the_summary(offline):
    log_curve(["wandb"], "k", CONFIG, offline, CURVE, SUMMARY)
    with pytest.raises(RuntimeError), track(["wandb"], "broken", CONFIG, offline) as tracked:
        tracked.log_point(CURVE[0])
        raise RuntimeError("diverged")
    runs = {run["name"]: run for run in finished_wandb_runs(offline / "wandb_dir", count=2)}
    assert set(runs) == {"k", "broken"}
    run = runs["k"]
    assert run["project"] == "transferbench" and run["exit_code"] == 0 and runs["broken"]["exit_code"] == 1
    assert run["config"]["hparams"] == {"value": CONFIG["hparams"]} or run["config"]["hparams"] == CONFIG["hparams"]
    for key in ("lr", "train_loss", "top1"):
        assert {row["_step"]: row[key] for row in run["history"] if key in row} == _curve_of(CURVE, key), key
    assert run["summary"]["best_top1"] == 0.5 and run["summary"]["best_epoch"] == 2
    assert "solver" not in run["summary"]


class _Recording:
    """A tracker that records what it is told (in ``CALLS``), for the failure policy of ``Tracking``."""

    CALLS: ClassVar[list] = []

    def __init__(self, folder: Path) -> None:
        pass

    def start(self, run_name: str, config: dict) -> None:
        self.CALLS.append(("start", run_name))

    def log(self, step: int, metrics: dict) -> None:
        self.CALLS.append(("log", step, dict(metrics)))

    def finish(self, summary: dict, failed: bool = False) -> None:
        self.CALLS.append(("finish", dict(summary), failed))


class _CannotStart(_Recording):
    def start(self, run_name: str, config: dict) -> None:
        raise ConnectionError("api.wandb.ai unreachable\nretrying")


class _FailsAtStep1(_Recording):
    def log(self, step: int, metrics: dict) -> None:
        if step == 1:
            raise OSError("No space left on device")
        super().log(step, metrics)


def test_a_failing_tracker_is_a_warning_and_the_run_and_the_others_go_on(monkeypatch, tmp_path):
    monkeypatch.setattr(_Recording, "CALLS", [])
    monkeypatch.setitem(BACKENDS, "wandb", Backend(_CannotStart, "json", "wandb"))
    monkeypatch.setitem(BACKENDS, "mlflow", Backend(_FailsAtStep1, "json", "mlflow"))
    monkeypatch.setitem(BACKENDS, "tensorboard", Backend(_Recording, "json", "tensorboard"))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # the package's logger, whether or not main() stopped its propagation
    logger = logging.getLogger("transferbench")
    logger.addHandler(handler)
    try:
        log_curve(["wandb", "mlflow", "tensorboard"], "k", CONFIG, tmp_path, CURVE, SUMMARY)
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == ["--log wandb could not start: ConnectionError: api.wandb.ai unreachable; the run goes on "
                        "without it",
                        "--log mlflow stopped logging: OSError: No space left on device; the run goes on without it"]
    # mlflow's tracker: started, step 0, then dropped (never finished); tensorboard's: everything
    expected = [("start", "k"), ("start", "k"), ("log", 0, {"lr": 0.1, "train_loss": 2.0}),
                ("log", 0, {"lr": 0.1, "train_loss": 2.0})]
    assert _Recording.CALLS[:4] == expected
    assert _Recording.CALLS[4:] == [("log", 1, {k: v for k, v in CURVE[1].items() if k != "epoch"}),
                                    ("log", 2, {k: v for k, v in CURVE[2].items() if k != "epoch"}),
                                    ("finish", {"top1": 0.5, "best_epoch": 2.0, "best_top1": 0.5}, False)]


def test_without_trackers_nothing_is_imported_or_written(tmp_path):
    probe = textwrap.dedent("""
        import sys
        from transferbench.cli import build_parser
        from transferbench.tracking import log_curve, track
        args = build_parser().parse_args(["run", "--task", "digits", "--log", "wandb,mlflow", "--log", "tensorboard"])
        assert args.trackers == ["wandb", "mlflow", "tensorboard"], args.trackers
        with track([], "k", {}, sys.argv[1]) as tracked:
            tracked.log_point({"epoch": 0, "top1": 0.5})
        log_curve([], "k", {}, sys.argv[1], [{"epoch": 0}], {"top1": 0.5})
        print(sorted(m for m in ("wandb", "mlflow", "tensorboard", "torch") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[-2] == "[]"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["neptune", "wandb,neptune", ","])
def test_an_unknown_tracker_is_refused_while_the_flags_are_read(value, capsys):
    for command in (["run", "--task", "digits"], ["upstream", "--method", "gmp"], ["sweep", "mini"]):
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args([*command, "--log", value])
        assert stop.value.code == 2
        assert "choose from wandb, tensorboard, mlflow" in capsys.readouterr().err


# --- through the commands ---


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    write_task("cifar10", root / "data", "folders", train_per_class=3, test_per_class=2, image_size=8)
    write_pruned_checkpoint(root / "tiny_50.pth", sparsity=0.5)
    return root


def _run_args(world: Path, results: Path, *extra: str) -> list[str]:
    return ["run", "--checkpoint", str(world / "tiny_50.pth"), "--sparsity", "0.5", "--task", "cifar10",
            "--data-root", str(world / "data"), "--results", str(results), "--image-size", "32", "--workers", "0",
            *extra]


def _record(results: Path) -> dict:
    [path] = (results / "runs").glob("*/result.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("command", ["run", "upstream", "sweep"])
def test_a_tracker_not_installed_is_one_line_naming_its_extra_before_any_work(command, world, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.setitem(BACKENDS, "wandb", Backend(tracking.WandbTracker, "transferbench_no_such_package", "wandb"))
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    argv = {"run": _run_args(world, tmp_path / "out", "--mode", "full", "--epochs", "1"),
            "upstream": ["upstream", "--method", "gmp", "--sparsity", "0.5", "--out", str(tmp_path / "out")],
            "sweep": ["sweep", "mini", "--executor", "debug", "--results", str(tmp_path / "out")]}[command]
    assert main([*argv, "--log", "tensorboard,wandb"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line[:4].isdigit()]
    assert err == ["error: --log wandb: the transferbench_no_such_package package is not installed; "
                   "pip install 'transferbench[wandb]'"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpts").exists()


def test_log_with_upstream_from_is_refused_as_it_has_nothing_to_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(BACKENDS, "tensorboard", Backend(tracking.TensorBoardTracker, "json", "tensorboard"))
    assert main(["upstream", "--method", "cram", "--from", str(tmp_path / "dense.pth"), "--out", str(tmp_path / "out"),
                 "--log", "tensorboard"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --log with --from: one-shot pruning trains no epochs, so "
                                                    "a tracker would get nothing; drop --log"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_full_run_reports_its_curve_and_metrics_and_changes_no_number(world, offline, capsys):
    if not INSTALLED:
        pytest.skip("no tracker installed (pip install 'transferbench[wandb,tensorboard,mlflow]')")
    plain, logged = offline / "plain", offline / "logged"
    assert main(_run_args(world, plain, "--mode", "full", "--epochs", "3", "--set", "eval_every=2")) == 0
    assert main(_run_args(world, logged, "--mode", "full", "--epochs", "3", "--set", "eval_every=2",
                          "--log", ",".join(INSTALLED))) == 0
    record, without = _record(logged), _record(plain)
    assert record["run_key"] == without["run_key"]  # logging is not part of the run key
    assert (record["metrics"], record["curve"]) == (without["metrics"], without["curve"])  # nor of any number
    assert record["config"]["trackers"] == INSTALLED and "trackers" not in without["config"]
    curve, key, top1 = record["curve"], record["run_key"], record["metrics"]["top1"]
    assert _curve_of(curve, "top1").keys() == {1, 2}  # evaluated at epoch 2 and at the last, 3
    if "tensorboard" in INSTALLED:
        scalars = tensorboard_scalars(logged / "tensorboard" / key)
        for name in ("lr", "train_loss", "top1", "mean_per_class_acc"):
            assert scalars[name] == pytest.approx(_curve_of(curve, name)), name
        assert scalars["final/top1"] == pytest.approx({2: top1})
    if "mlflow" in INSTALLED:
        run = mlflow_runs(offline)[key]
        assert run["status"] == "FINISHED" and run["params"]["hparams.epochs"] == "3"
        assert run["metrics"]["train_loss"] == _curve_of(curve, "train_loss")
        assert run["metrics"]["best_top1"] == {2: record["metrics"]["best_top1"]}
    if "wandb" in INSTALLED:
        [run] = finished_wandb_runs(offline / "wandb_dir", count=1)
        assert run["name"] == key and run["exit_code"] == 0
        assert {row["_step"]: row["top1"] for row in run["history"] if "top1" in row} == _curve_of(curve, "top1")
        assert run["summary"]["top1"] == top1


@needs("tensorboard")
@pytest.mark.slow
def test_a_linear_probe_reports_the_curve_its_record_keeps(world, offline, capsys):
    assert main(_run_args(world, offline / "out", "--epochs", "4", "--log", "tensorboard")) == 0
    record = _record(offline / "out")
    scalars = tensorboard_scalars(offline / "out" / "tensorboard" / record["run_key"])
    assert scalars["train_loss"] == pytest.approx(_curve_of(record["curve"], "train_loss"))
    assert scalars["top1"] == pytest.approx(_curve_of(record["curve"], "top1"))
    assert scalars["final/top1"] == pytest.approx({3: record["metrics"]["top1"]})


@needs("mlflow")
@pytest.mark.slow
def test_upstream_training_reports_each_epoch_and_the_checkpoints_top1(offline, monkeypatch, capsys):
    import torch

    from transferbench.checkpoints import find_checkpoint
    from transferbench.upstream import load_recipe

    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(offline / "ckpts"))
    recipe = load_recipe("small_cpu")
    recipe.update(name="tiny", train_size=256, test_size=64, batch_size=64, epochs=3)
    (offline / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["upstream", "--method", "gmp", "--sparsity", "0.5", "--recipe", str(offline / "tiny.yaml"),
                 "--log", "mlflow"]) == 0
    spec = find_checkpoint("gmp", 0.5, "resnet_tiny")
    metadata = torch.load(spec.path, map_location="cpu", weights_only=True)["metadata"]
    run = mlflow_runs(offline)[spec.name]
    assert run["status"] == "FINISHED" and run["params"]["recipe"] == "tiny"
    assert run["metrics"]["train_loss"] == dict(enumerate(metadata["training"]["epoch_losses"]))
    assert run["metrics"]["sparsity"][2] == pytest.approx(0.5, abs=0.01)  # GMP reaches its target by the end
    assert run["metrics"]["upstream_top1"] == {2: float(metadata["upstream_top1"])}
    assert main(["upstream", "--method", "gmp", "--sparsity", "0.5", "--recipe", str(offline / "tiny.yaml"),
                 "--log", "mlflow"]) == 0  # registered already: skipped, and no empty tracker run
    assert len(mlflow_runs(offline)) == 1


@needs("tensorboard")
@pytest.mark.slow
@pytest.mark.parametrize("executor", ["debug", pytest.param("local", marks=pytest.mark.slow)])
def test_a_sweep_passes_log_to_its_upstream_unit_and_every_job(executor, tmp_path, monkeypatch, capsys):
    """In process (debug) and through submitit's pickled jobs in their own processes (local, as on SLURM)."""
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    sweep_file, out = write_upstream_sweep(tmp_path), tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--executor", executor, "--results", str(out), "--workers", "0",
                 "--log", "tensorboard"]) == 0
    [unit] = glob.glob(str(tmp_path / "**" / "tensorboard" / "resnet_tiny_magnitude_50_tiny_s0"), recursive=True)
    assert set(tensorboard_scalars(Path(unit))["train_loss"]) == {0, 1}  # the tiny recipe's 2 epochs
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")]
    assert len(records) == 2
    for record in records:
        assert record["config"]["trackers"] == ["tensorboard"]
        scalars = tensorboard_scalars(out / "tensorboard" / record["run_key"])
        assert scalars["top1"] == pytest.approx(_curve_of(record["curve"], "top1"))
