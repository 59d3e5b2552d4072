"""Comparisons that know the protocol (issue #15 point 7): each record's deviations from the paper's protocol,
compare/leaderboards leaving deviating runs out (and marking them when asked), duplicate seeds, --epoch last|best,
and caltech256's mean per-class accuracy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from transferbench.cli import main
from transferbench.errors import TransferbenchError
from transferbench.metrics import mean_per_class_accuracy
from transferbench.protocol import protocol_deviations
from transferbench.report.collect import align_primary, collect, runs_frame
from transferbench.report.compare import compare, to_markdown
from transferbench.report.latex import compact_latex
from transferbench.report.leaderboard import leaderboard
from transferbench.report.prediction_metrics import per_class_accuracy
from transferbench.report.reference import read_reference
from transferbench.report.select import check_duplicate_seeds, exclude_deviating
from transferbench.runspec import CheckpointRef, make_spec
from transferbench.store import Metrics, RunRecord
from transferbench.tasks import get_task

CKPT = CheckpointRef(method="acdc", sparsity=0.9, arch="resnet50", identity="acdc90")


def _deviations(task: str = "cifar10", mode: str = "linear", **overrides) -> list[str]:
    spec = make_spec(task, mode, 21, CKPT, overrides)
    return protocol_deviations(spec.task, spec.mode, spec.hparams.to_dict())


# ------------------------------------------------------------------------------------------------ deviations


def test_deviations_of_hand_made_specs():
    assert _deviations() == [] and _deviations("aircraft", "full") == []  # aircraft's full LR is 0.01: the card's
    assert _deviations(epochs=8) == ["epochs=8"]  # the decay points move with the epochs: not a second deviation
    assert _deviations(precision="bf16") == ["precision=bf16"]
    assert _deviations(loader="ffcv") == ["loader=ffcv"]
    assert _deviations(limit=100) == ["limit=100"]
    assert _deviations(image_size=64) == ["image_size=64"]
    assert _deviations(solver="lbfgs") == ["solver=lbfgs"]  # the paper's heads are trained with SGD
    assert _deviations("dtd", "full", lr=0.01) == ["lr=0.01"]  # dtd's full fine-tuning LR is 0.001
    assert _deviations(epochs=8, precision="bf16", limit=100) == ["epochs=8", "precision=bf16", "limit=100"]
    assert _deviations(lr_decay_after=[10, 20]) == ["lr_decay_after=10,20"]
    assert _deviations(eval_every=5) == []  # how often the test split is scored changes no training
    assert _deviations(interpolation="bicubic") == ["interpolation=bicubic"]  # "" (the architecture's) is not one
    assert _deviations(lbfgs_holdout=0.3) == []  # unused by an SGD head
    assert _deviations("digits") == ["task=digits(mini)"]  # a mini-task never is the paper's; 32 px is its own
    assert _deviations("digits", image_size=64) == ["task=digits(mini)", "image_size=64"]


def _record_json(key: str, *, task: str = "cifar10", seed: int = 21, hparams: dict | None = None, top1: float = 0.8,
                 mpc: float | None = None, primary_metric: str = "top1", created_at: str = "2026-01-01T00:00:00+00:00",
                 curve: list | None = None, method: str = "acdc", sparsity: float = 0.9, **extra) -> dict:
    mpc = top1 if mpc is None else mpc
    primary = top1 if primary_metric == "top1" else mpc
    return {"schema_version": 1, "run_key": key, "status": "completed", "task": task, "method": method,
            "arch": "resnet50", "mode": "linear", "seed": seed, "target_sparsity": sparsity,
            "created_at": created_at, "config": {"hparams": {"solver": "sgd", **(hparams or {})}},
            "metrics": {"top1": top1, "mean_per_class_acc": mpc, "primary_metric": primary_metric,
                        "primary": primary}, "curve": curve or [], **extra}


def test_records_state_their_protocol_and_older_ones_derive_it():
    spec = make_spec("cifar10", "linear", 21, CKPT, {"epochs": 8})
    record = RunRecord(run_key=spec.run_key, task="cifar10", method="acdc", arch="resnet50", mode="linear", seed=21,
                       target_sparsity=0.9, metrics=Metrics(0.5, 0.5, "top1", 0.5),
                       config={"hparams": spec.hparams.to_dict()})
    written = json.loads(json.dumps(record.to_json()))
    assert written["protocol"] == ["epochs=8"]  # what the runner writes: computed from the spec's hyper-parameters
    assert RunRecord.from_json(written).deviations == ("epochs=8",)
    paper = _record_json("p", hparams=make_spec("cifar10", "linear", 21, CKPT).hparams.to_dict())
    assert RunRecord.from_json(paper).protocol == "paper"  # older record: derived from its stored config
    assert "protocol" not in RunRecord.from_json(paper).to_json()  # ... and written back in its own layout
    older = _record_json("o", hparams={"precision": "bf16"})
    assert RunRecord.from_json(older).protocol == ["precision=bf16"]
    stated = _record_json("s", hparams={}, protocol=["loader=ffcv"])  # a stated protocol is taken as written
    assert RunRecord.from_json(stated).deviations == ("loader=ffcv",)


# ------------------------------------------------------------------------------------- compare and leaderboards


def _write_store(root: Path, records: list[dict]) -> Path:
    for rec in records:
        path = root / "runs" / rec["run_key"] / "result.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))
    return root


PAPER_FILE = "dset,model,sparsity,seed,val_acc,\n" + "".join(
    f"cifar10,{m},{s},seed_{seed},{v}\n" for m, s, vals in (("AC/DC", 0.9, (0.80, 0.81, 0.79)),
                                                           ("Dense", 0.0, (0.82, 0.83, 0.81)))
    for seed, v in zip((21, 51, 81), vals, strict=True))


@pytest.fixture
def store(tmp_path):
    """Three paper-protocol seeds of AC/DC 90% on cifar10, one bf16 run (seed 111), and the paper's file."""
    root = _write_store(tmp_path / "results", [
        *(_record_json(f"paper{s}", seed=s, top1=v) for s, v in ((21, 0.80), (51, 0.805), (81, 0.795))),
        _record_json("bf16run", seed=111, top1=0.60, hparams={"precision": "bf16"}),
    ])
    reference = tmp_path / "linear_transfer_results.txt"
    reference.write_text(PAPER_FILE)
    return root, reference


def test_compare_leaves_deviating_runs_out_unless_asked_and_marks_them(store):
    root, reference = store
    runs = collect(root).runs
    assert dict(zip(runs["run_key"], runs["protocol"], strict=True))["bf16run"] == "precision=bf16"
    both = pd.concat([runs, read_reference(reference)], ignore_index=True)
    strict = compare(both).set_index("method").loc["acdc"]
    assert strict["ours_n"] == 3 and strict["ours_mean"] == pytest.approx(80.0)  # the bf16 run is not counted
    assert strict["protocol"] == "paper" and "†" not in to_markdown(compare(both))
    loose = compare(both, include_deviating=True)
    row = loose.set_index("method").loc["acdc"]
    assert row["ours_n"] == 4 and row["ours_mean"] == pytest.approx(75.0) and row["protocol"] == "precision=bf16"
    text = to_markdown(loose)
    assert "† (n=4)" not in text and "(n=4) †" in text and "deviate from the paper's protocol (precision=bf16)" in text
    with pytest.raises(TransferbenchError, match=r"all 1 run.*deviate.*--include-deviating"):
        compare(pd.concat([runs[runs["run_key"] == "bf16run"], read_reference(reference)], ignore_index=True))


def test_side_by_side_leaderboard_excludes_then_marks(store):
    root, reference = store
    paper = read_reference(reference)
    runs = collect(root).runs
    excluded = pd.concat([exclude_deviating(runs, beside=paper), paper], ignore_index=True)
    lb = leaderboard(excluded, "resnet50", "linear", source="both")
    assert lb.cell(("acdc", 0.9, "ours"), "cifar10")[2] == 3 and "†" not in lb.to_markdown()
    included = pd.concat([exclude_deviating(runs, include=True, beside=paper), paper], ignore_index=True)
    lb = leaderboard(included, "resnet50", "linear", source="both")
    assert lb.cell(("acdc", 0.9, "ours"), "cifar10")[2] == 4
    assert lb.marked(("acdc", 0.9, "ours"), "cifar10") and not lb.marked(("acdc", 0.9, "paper"), "cifar10")
    assert "†" in lb.to_markdown() and "precision=bf16" in lb.to_markdown() and r"\dag" in lb.to_latex()
    assert r"\textsuperscript{\dag}" in compact_latex(lb)
    # a mini-task's runs have no paper cell to stand beside: our own tables keep them
    mini = runs.assign(task="digits", protocol="task=digits(mini)")
    assert len(exclude_deviating(mini, beside=paper)) == len(mini)


def test_cli_compare_default_and_include_deviating(store, tmp_path, capsys):
    root, reference = store
    assert main(["compare", "--results", str(root), "--reference", str(reference), "--out", str(tmp_path / "c")]) == 0
    assert "(n=3)" in capsys.readouterr().out
    assert main(["compare", "--results", str(root), "--reference", str(reference), "--out", str(tmp_path / "c"),
                 "--include-deviating"]) == 0
    assert "(n=4) †" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- duplicate seeds


def test_duplicate_seeds_are_an_error_unless_latest(store, tmp_path, capsys):
    root, reference = store
    _write_store(root, [_record_json("again21", seed=21, top1=0.9, created_at="2026-02-01T00:00:00+00:00")])
    args = ["compare", "--results", str(root), "--reference", str(reference), "--out", str(tmp_path / "c")]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "paper21" in errors[0] and "again21" in errors[0] and "--latest" in errors[0]
    assert main([*args, "--latest"]) == 0
    out = capsys.readouterr()
    assert "(n=3)" in out.out
    said = [line for line in out.err.splitlines() if "--latest:" in line]
    assert len(said) == 1 and "paper21" in said[0]  # the older run, named in one line
    table = pd.read_csv(tmp_path / "c" / "compare.csv")
    assert table.loc[0, "ours_mean"] == pytest.approx((90.0 + 80.5 + 79.5) / 3)  # the newest seed 21 counts
    # the same seed under another protocol is not a repeat of it
    runs = collect(root).runs
    other = runs[runs["run_key"] == "paper51"].assign(run_key="short51", protocol="epochs=8")
    assert len(check_duplicate_seeds(pd.concat([runs[runs["run_key"] != "again21"], other]))) == 5


# ---------------------------------------------------------------------------------------------------- --epoch


CURVE = [{"epoch": 0, "lr": 0.01, "train_loss": 2.0, "top1": 0.50, "mean_per_class_acc": 0.40},
         {"epoch": 1, "lr": 0.01, "train_loss": 1.0, "top1": 0.70, "mean_per_class_acc": 0.60},
         {"epoch": 2, "lr": 0.001, "train_loss": 0.9},  # not evaluated (eval_every)
         {"epoch": 3, "lr": 0.001, "train_loss": 0.8, "top1": 0.65, "mean_per_class_acc": 0.66}]


def test_epoch_best_vs_last(tmp_path):
    root = _write_store(tmp_path / "r", [_record_json("k", top1=0.65, mpc=0.66, curve=CURVE),
                                         _record_json("pets", task="pets", top1=0.65, mpc=0.66, curve=CURVE,
                                                      primary_metric="mean_per_class")])
    last = collect(root).runs.set_index("run_key")
    best = collect(root, epoch="best").runs.set_index("run_key")
    assert (last.loc["k", "top1"], last.loc["k", "primary"]) == (0.65, 0.65)
    assert (best.loc["k", "top1"], best.loc["k", "mean_per_class_acc"], best.loc["k", "primary"]) == (0.70, 0.66, 0.70)
    assert best.loc["pets", "primary"] == 0.66  # each metric's own best epoch: pets reports mean per-class
    _write_store(root, [_record_json("nocurve")])
    with pytest.raises(TransferbenchError, match="--epoch best: run nocurve kept no per-epoch test top1"):
        collect(root, epoch="best")
    with pytest.raises(TransferbenchError, match="--epoch must be last or best"):
        collect(root, epoch="first")


def test_cli_epoch_best_without_a_curve_is_one_line(tmp_path, capsys):
    root = _write_store(tmp_path / "r", [_record_json("k", curve=CURVE), _record_json("nocurve", seed=51)])
    assert main(["collect", "--results", str(root), "--epoch", "best"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nocurve" in errors[0] and "Traceback" not in err
    assert not (root / "runs.csv").exists()  # nothing written
    assert main(["collect", "--results", str(root)]) == 0 and (root / "runs.csv").exists()


# ------------------------------------------------------------------------------------------- caltech256 metric


def test_caltech256_is_scored_by_mean_per_class_accuracy(tmp_path, caplog, monkeypatch):
    assert get_task("caltech256").metric == "mean_per_class"
    # an unbalanced hand-made prediction set: 6 images of class 0 (all right), 2 of class 1 (1 right), 2 of class 2
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    expected = balanced_accuracy_score(labels, preds)  # (1 + 0.5 + 0) / 3
    assert mean_per_class_accuracy(preds, labels, 257) == pytest.approx(expected) == pytest.approx(0.5)
    assert np.nanmean(per_class_accuracy(preds, labels, 257)[0]) == pytest.approx(expected)
    assert float(np.mean(preds == labels)) == pytest.approx(0.7)  # top-1 differs: the choice matters
    # an older caltech256 record (primary top1) is re-read with its recorded mean per-class accuracy, said in a line
    old = runs_frame([{"run_key": "c", "task": "caltech256", "method": "dense", "arch": "resnet50", "mode": "linear",
                       "seed": 21, "target_sparsity": 0.0, "top1": 0.7, "mean_per_class_acc": 0.5,
                       "primary_metric": "top1", "primary": 0.7}])
    logger = logging.getLogger("transferbench")  # as before any main() of another test set it up on its stderr
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.WARNING, logger="transferbench"):
        aligned = align_primary(old)
    assert (aligned.loc[0, "primary"], aligned.loc[0, "primary_metric"]) == (0.5, "mean_per_class")
    assert any("caltech256" in r.getMessage() and "1 re-read" in r.getMessage() for r in caplog.records)
    # the paper's caltech256 numbers are read as mean per-class accuracy too
    ref = tmp_path / "linear_transfer_results.txt"
    ref.write_text("dset,model,sparsity,seed,val_acc\ncaltech256,Dense,0.0,seed_21,0.8512\n")
    row = read_reference(ref).iloc[0]
    assert row["primary_metric"] == "mean_per_class" and row["mean_per_class_acc"] == 0.8512
