"""The results store: RunRecord's reader and writer against records written before the redesign, and the one
judgement of run states (the vocabulary status and collect share)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from transferbench.report import collect
from transferbench.store import (
    FAILED,
    LOST,
    MISSING,
    RUNNING,
    UNFINISHED,
    Metrics,
    RecordError,
    RunRecord,
    SparsityInfo,
    existing_record,
    read_record,
    run_states,
    write_record,
)

GOLDEN = Path(__file__).parent / "golden" / "records"
BEFORE = sorted(GOLDEN.glob("*_before_redesign.json"))  # written by transferbench before the store existed


@pytest.mark.parametrize("path", BEFORE, ids=lambda p: p.stem)
def test_records_written_before_the_redesign_read_and_write_back_unchanged(path):
    data = json.loads(path.read_text())
    record = RunRecord.from_json(data)
    assert record.to_json() == data  # the one writer writes exactly the layout records have always had
    assert (record.run_key, record.task, record.mode, record.seed) == (data["run_key"], data["task"], data["mode"],
                                                                      data["seed"])
    assert record.metrics.top1 == data["metrics"]["top1"] and record.metrics.primary == data["metrics"]["primary"]
    assert record.sparsity.measured == data["sparsity"]["backbone_after"]
    assert record.upstream_fraction == pytest.approx(data["checkpoint"]["upstream_top1"] / 100)


def test_records_written_before_the_redesign_still_collect(tmp_path):
    for path in BEFORE:
        data = json.loads(path.read_text())
        (tmp_path / "runs" / data["run_key"]).mkdir(parents=True)
        (tmp_path / "runs" / data["run_key"] / "result.json").write_text(path.read_text())
    runs = collect(tmp_path).runs.set_index("run_key")
    assert len(runs) == len(BEFORE)
    for path in BEFORE:
        data = json.loads(path.read_text())
        row = runs.loc[data["run_key"]]
        assert (row["task"], row["method"], row["mode"], row["solver"]) == (data["task"], data["method"], data["mode"],
                                                                data["config"]["hparams"]["solver"])
        assert row.top1 == data["metrics"]["top1"] and row.measured_sparsity == data["sparsity"]["backbone_after"]


def _record(key: str = "k", **changes) -> RunRecord:
    values = {"run_key": key, "task": "digits", "method": "gmp", "arch": "resnet_tiny", "mode": "full", "seed": 21,
              "target_sparsity": 0.9, "metrics": Metrics(0.8, 0.75, "top1", 0.8, {"best_epoch": 3})}
    return RunRecord(**{**values, **changes})


def test_write_then_read_is_the_same_record(tmp_path):
    record = _record(curve=[{"epoch": 0, "top1": 0.5}], config={"hparams": {"solver": "sgd"}})
    classes = [str(i) for i in range(10)]
    path = write_record(tmp_path, record, np.zeros((3, 10), np.float32), np.array([1, 2, 3]), classes)
    assert path == tmp_path / "runs" / "k" / "result.json"
    assert read_record(path) == record == existing_record(tmp_path, "k")
    npz = np.load(tmp_path / "runs" / "k" / "predictions.npz")
    assert npz["logits"].shape == (3, 10) and list(npz["classes"]) == [str(i) for i in range(10)]
    assert record.solver == "sgd" and record.metrics.extra == {"best_epoch": 3}


def test_the_sparsity_over_the_method_s_prunable_set_is_written_only_when_known(tmp_path):
    known = _record(sparsity=SparsityInfo(upstream_measured=0.8206, backbone_before=0.8206, backbone_after=0.8206,
                                          prunable_set="conv_except_first", upstream_measured_prunable=0.8926))
    data = known.to_json()
    assert data["sparsity"]["prunable_set"] == "conv_except_first"
    assert data["sparsity"]["upstream_measured_prunable"] == 0.8926
    assert RunRecord.from_json(json.loads(json.dumps(data))) == known
    unknown = _record(sparsity=SparsityInfo(upstream_measured=0.9))  # as every record written before them
    assert not {"prunable_set", "upstream_measured_prunable"} & set(unknown.to_json()["sparsity"])
    assert RunRecord.from_json(unknown.to_json()) == unknown


@pytest.mark.parametrize(("change", "reason"), [
    (lambda d: [d], "not a JSON object but list"),
    (lambda d: {k: v for k, v in d.items() if k != "status"}, "missing fields: status"),
    (lambda d: {**d, "status": "running"}, "status 'running'"),
    (lambda d: {**d, "seed": 1.5}, "missing fields: seed"),
    (lambda d: {**d, "task": None, "mode": 3}, "missing fields: task, mode"),
    (lambda d: {**d, "metrics": {**d["metrics"], "top1": 80.0}},
     "bad value: top1 80 is not a fraction, as schema_version 1 records store accuracies"),
    (lambda d: {**d, "target_sparsity": 90}, "bad value: target_sparsity 90 is not a fraction"),
    (lambda d: {**d, "checkpoint": {"upstream_top1": 7613}}, "bad value: checkpoint upstream_top1 7613 is not a "
                                                             "percentage"),
])
def test_what_is_not_a_completed_run_is_refused_with_its_reason(change, reason):
    with pytest.raises(RecordError) as error:
        RunRecord.from_json(change(_record().to_json()))
    assert str(error.value).startswith(reason)


def test_a_legacy_record_is_upgraded_with_one_unit_decision():
    legacy = {"status": "completed", "task": "digits", "method": "gmp", "arch": "resnet_tiny", "mode": "linear",
              "seed": 21, "top1": 81.0, "mean_per_class": 0.8,  # percent: any value over 1 decides for the record
              "checkpoint": {"sparsity": 90, "name": "gmp90"}, "sparsity": 89.7, "upstream": {"top1": 76.13}}
    record = RunRecord.from_json(legacy, default_run_key="old")
    assert (record.run_key, record.schema_version, record.checkpoint.identity) == ("old", 0, "gmp90")
    assert record.metrics.top1 == pytest.approx(0.81) and record.metrics.mean_per_class_acc == pytest.approx(0.008)
    assert record.target_sparsity == pytest.approx(0.9) and record.sparsity.measured == pytest.approx(0.897)
    assert record.upstream_fraction == pytest.approx(0.7613)
    assert record.metrics.primary_metric == "top1" and record.metrics.primary == pytest.approx(0.81)  # task card
    assert math.isnan(RunRecord.from_json({**legacy, "mean_per_class": None}).metrics.mean_per_class_acc)
    with pytest.raises(RecordError, match="missing fields: primary"):  # no accuracy of the task's metric at all
        RunRecord.from_json({**legacy, "top1": None})


def test_one_vocabulary_for_every_trace_a_run_leaves(tmp_path):
    now = time.time()
    write_record(tmp_path, _record("done"), np.zeros((1, 2), np.float32), np.zeros(1))
    (tmp_path / "runs" / "partial").mkdir(parents=True)
    (tmp_path / "runs" / "partial" / "predictions.npz").write_bytes(b"x")
    (tmp_path / "runs" / "bad").mkdir()
    (tmp_path / "runs" / "bad" / "result.json").write_text("[1]")
    for key, age in (("live", 5), ("killed", 3600)):
        claim = tmp_path / "work" / key / "claim.json"
        claim.parent.mkdir(parents=True)
        claim.write_text(json.dumps({"job_id": "9", "host": "n1"}))
        os.utime(claim, (now - age, now - age))
    (tmp_path / "work" / "by_hand").mkdir()
    (tmp_path / "work" / "by_hand" / "train_state.pt").write_bytes(b"x")
    states = run_states(tmp_path, now=now)  # every key the store holds a trace of
    assert {k: s.state for k, s in states.items()} == {
        "done": "done", "partial": LOST, "bad": FAILED, "live": RUNNING, "killed": LOST, "by_hand": UNFINISHED}
    assert states["partial"].reason == "lost: partial: no result.json beside predictions.npz"
    assert states["bad"].reason == "failed: not a JSON object but list"
    assert states["killed"].detail == "job 9 stopped sending heartbeats 60 min ago; work/ holds no training state"
    assert run_states(tmp_path, ["never"])["never"].state == MISSING
    # collect reports exactly the store's judgement of what is not done
    failed = collect(tmp_path, now=now).failed.set_index("run_key")
    assert dict(failed["state"]) == {k: s.state for k, s in states.items() if s.state != "done"}
    assert dict(failed["reason"]) == {k: s.reason for k, s in states.items() if s.state != "done"}
