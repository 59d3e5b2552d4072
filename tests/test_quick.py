"""Quick tries: `--limit N` (a class-balanced subset of each split, part of the run key and the record),
`sweep SPEC --only ...`, `sweep show`/`sweep list`, and `collect --reference` before any run."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fixtures_data import PAPER_RESULTS, learnable_image, write_task
from fixtures_models import write_pruned_checkpoint

from transferbench.cli import _hparam_overrides, build_parser, main
from transferbench.dispatch import load_sweep, plan_sweep
from transferbench.dispatch.sweep_filter import narrow_sweep, parse_only
from transferbench.errors import TransferbenchError
from transferbench.report.collect import collect
from transferbench.report.compare import compare
from transferbench.runspec import CheckpointRef, RunSpec, resolve_hparams
from transferbench.tasks import load_split
from transferbench.tasks.limit import limit_split, limited_indices

SHIPPED_SWEEPS = Path(__file__).resolve().parents[1] / "transferbench" / "shipped" / "sweeps"


def _one_line_error(capsys, code: int, *needles: str) -> None:
    err = [line for line in capsys.readouterr().err.splitlines() if not line[:4].isdigit()]  # no log lines
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err[0]


# --- the subset ---------------------------------------------------------------------------------------------------

def test_limited_indices_take_classes_in_turn_keeping_the_splits_order():
    labels = [0, 0, 0, 1, 1, 2]  # class 0 at 0-2, class 1 at 3-4, class 2 at 5
    # round robin: first of each class (0, 3, 5), then the second of each (1, 4), then the third (2)
    assert limited_indices(labels, 3) == [0, 3, 5]
    assert limited_indices(labels, 4) == [0, 1, 3, 5]
    assert limited_indices(labels, 5) == [0, 1, 3, 4, 5]
    assert limited_indices(labels, 0) == limited_indices(labels, 6) == limited_indices(labels, 99) == list(range(6))
    # classes need not come sorted in the split; the order is the class index, then the split's order
    assert limited_indices([2, 1, 1, 0], 2) == [1, 3]  # class 0 at 3, class 1 first at 1


def test_smaller_limits_are_subsets_of_larger_ones():
    labels = [i % 7 for i in range(100)][::-1]
    chosen = [set(limited_indices(labels, n)) for n in range(0, 101, 9)][1:]
    assert all(a <= b for a, b in itertools.pairwise(chosen))


def test_limit_split_of_a_real_split_is_balanced_and_consistent():
    split = load_split("digits", "train", None)
    part = limit_split(split, 25)
    assert len(part) == len(part.dataset) == 25 and part.paper_split is False
    assert sorted(Counter(part.labels).values()) == [2] * 5 + [3] * 5  # 10 classes: 25 = 5 x 3 + 5 x 2
    for i in (0, 11, 24):  # the subset's images carry the labels the split lists for them
        assert part.dataset[i][1] == part.labels[i]
    assert limit_split(split, 0) is split and limit_split(split, len(split)) is split


# --- the key and the hyper-parameter ------------------------------------------------------------------------------

def _spec(**overrides) -> RunSpec:
    ck = CheckpointRef(method="acdc", sparsity=0.9, arch="resnet50", identity="acdc-resnet50-90")
    return RunSpec(task="cifar10", mode="linear", seed=21, checkpoint=ck,
                   hparams=resolve_hparams("linear", 0.001, overrides))


def test_limit_is_part_of_the_run_key_and_absent_from_it_by_default():
    full, quick = _spec(), _spec(limit=100)
    assert "limit" not in full.key_material()["hparams"]  # keys of runs made before --limit stay valid
    assert quick.key_material()["hparams"]["limit"] == 100
    assert quick.run_key.startswith("cifar10.acdc90.resnet50.linear-limit100.s21.")
    assert full.run_key.startswith("cifar10.acdc90.resnet50.linear.s21.")
    assert _spec(limit=200).run_key != quick.run_key != full.run_key
    assert quick.extraction_key != full.extraction_key  # never one feature extraction for both


def test_limit_flag_and_set_are_one_hyper_parameter():
    parser = build_parser()
    base = ["run", "--task", "cifar10", "--method", "acdc"]
    assert _hparam_overrides(parser.parse_args([*base, "--limit", "64"])) == {"limit": 64}
    assert _hparam_overrides(parser.parse_args([*base, "--set", "limit=64"])) == {"limit": 64}
    assert _spec(**{"limit": "64"}).run_key == _spec(limit=64).run_key  # a YAML override read as text


@pytest.mark.parametrize(("overrides", "needle"), [({"limit": -1}, "--limit"),
                                                   ({"limit": 10, "loader": "ffcv"}, "--loader ffcv")])
def test_bad_limits_are_refused(overrides, needle):
    with pytest.raises(TransferbenchError, match=needle):
        _spec(**overrides)


# --- a limited run end to end -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    write_task("cifar10", root / "data", "folders", train_per_class=4, test_per_class=3, image_size=16,
               image_fn=learnable_image)  # 40 train, 30 test images
    write_pruned_checkpoint(root / "tiny_50.pth", sparsity=0.5)
    return root


def _run(root: Path, out: Path, *extra: str) -> int:
    return main(["run", "--checkpoint", str(root / "tiny_50.pth"), "--sparsity", "0.5", "--method", "magnitude",
                 "--task", "cifar10", "--data-root", str(root / "data"), "--results", str(out), "--image-size",
                 "32", "--workers", "0", "--epochs", "2", *extra])


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_limited_run_records_its_limit_and_its_split_sizes(tiny, tmp_path, capsys, mode):
    out = tmp_path / "out"
    assert _run(tiny, out, "--mode", mode, "--limit", "15") == 0
    assert "note: a --limit quick try on 15 train and 15 test images" in capsys.readouterr().out
    (path,) = (out / "runs").glob("*/result.json")
    record = json.loads(path.read_text())
    assert f".{mode}-limit15.s21." in record["run_key"]
    assert record["config"]["hparams"]["limit"] == 15
    data = record["config"]["data"]
    assert (data["train_size"], data["test_size"], data["paper_split"]) == (15, 15, False)
    runs = collect(out).runs
    assert list(runs["limit"]) == [15]


def test_limited_runs_stay_out_of_the_comparison_with_the_paper():
    def row(key, limit, source, top1):
        return {"run_key": key, "task": "cifar10", "method": "acdc", "arch": "resnet50", "mode": "linear",
                "seed": 21, "target_sparsity": 0.9, "primary": top1, "top1": top1, "mean_per_class_acc": top1,
                "solver": "sgd", "limit": limit, "source": source, "created_at": None}
    paper = [row(f"p{i}", 0, "paper", 0.9 + i / 100) for i in range(3)]
    runs = pd.DataFrame([row("full", 0, "ours", 0.5), row("quick", 100, "ours", 0.1), *paper])
    table = compare(runs)
    assert table["ours_mean"].tolist() == [pytest.approx(50.0)]  # the full run only, in %
    with pytest.raises(TransferbenchError, match="only --limit runs"):
        compare(pd.DataFrame([row("quick", 100, "ours", 0.1), *paper]))


# --- sweeps: --only, --limit, show, list --------------------------------------------------------------------------

def _acdc_checkpoints(name: str) -> int:
    raw = yaml.safe_load((SHIPPED_SWEEPS / f"{name}.yaml").read_text())
    return sum(len(c["sparsity"]) if isinstance(c["sparsity"], list) else 1
               for c in raw["checkpoints"] if c["method"] == "acdc")


def test_only_narrows_a_packaged_sweep_in_a_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "none"))
    runs = _acdc_checkpoints("paper_resnet50_linear") * 1 * 5  # acdc's sparsities x cifar10 x 5 seeds
    assert main(["sweep", "paper_resnet50_linear", "--only", "task=cifar10,method=acdc", "--dry-run",
                 "--results", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"to run: {runs} run(s) in {runs // 5} job(s)" in out
    assert "paper_resnet50_linear.yaml --only task=cifar10,method=acdc) ->" in out  # the plan says it is narrowed
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_only_values_add_up_and_limit_reaches_every_run_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "none"))
    sweep = narrow_sweep(load_sweep("mini"), parse_only(["method=acdc,method=gmp", "seed=21,sparsity=90%"]), 50)
    assert {c.method for c in sweep.checkpoints} == {"acdc", "gmp"}
    assert sweep.seeds == {"linear": (21,), "full": (21,)}
    assert sweep.grid_size("linear") == sweep.grid_size("full") == 2 * 2  # 2 checkpoints x 2 mini-tasks
    specs = [s for unit in plan_sweep(sweep, tmp_path / "out").units(ready_only=False) for s in unit.specs]
    assert len(specs) == 8 and all("-limit50.s21." in s.run_key for s in specs)
    assert {s.hparams.epochs for s in specs if s.mode == "full"} == {6}  # the sweep's own overrides stay
    # rigl is every RigL variant of a sweep (the vocabulary's aliases)
    paper = narrow_sweep(load_sweep("paper_resnet50_linear"), parse_only(["method=rigl,sparsity=0.9"]))
    assert sorted(c.method for c in paper.checkpoints) == ["rigl_erk1x", "rigl_erk5x"]


@pytest.mark.parametrize(("only", "needles"), [
    ("colour=red", ["unknown key 'colour'", "task, method, mode, seed, sparsity"]),
    ("task=pets", ["task=pets", "has no such task", "digits"]),
    ("method=str", ["method=str", "acdc"]),
    ("seed=7", ["seed=7", "21"]),
    ("sparsity=95", ["write 0.95 or 95%"]),
    ("sparsity=50%", ["sparsity=50%", "90%"]),
    ("mode", ["KEY=VALUE"]),
])
def test_an_unknown_filter_is_a_one_line_error(tmp_path, capsys, only, needles):
    code = main(["sweep", "mini", "--only", only, "--dry-run", "--results", str(tmp_path / "out")])
    _one_line_error(capsys, code, *needles)
    assert not (tmp_path / "out").exists()


def test_sweep_show_prints_the_yaml_and_the_grid(capsys):
    assert main(["sweep", "show", "mini"]) == 0
    out = capsys.readouterr().out
    assert (SHIPPED_SWEEPS / "mini.yaml").read_text().strip() in out  # as written, comments included
    # mini: 4 checkpoints x 2 tasks x (3 linear seeds + 2 full seeds)
    assert "linear: 4 checkpoint(s) x 2 task(s) x 3 seed(s) x 1 solver(s) = 24 run(s)" in out
    assert "full: 4 checkpoint(s) x 2 task(s) x 2 seed(s) = 16 run(s)" in out and "total: 40 run(s)" in out
    assert main(["sweep", "show", "mini", "--only", "task=digits,method=acdc"]) == 0
    assert "total: 5 run(s)" in capsys.readouterr().out


def test_sweep_show_of_a_user_file_and_the_list_of_packaged_sweeps(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("# my grid\nname: mine\ncheckpoints: [{method: dense, sparsity: 0}]\ntasks: [digits]\n"
                    "modes: [linear]\nseeds: [1, 2]\nsolvers: [sgd, lbfgs]\n")
    assert main(["sweep", "show", str(mine)]) == 0
    out = capsys.readouterr().out
    assert "# my grid" in out and "total: 4 run(s)" in out  # 1 x 1 x 2 seeds x 2 solvers
    assert main(["sweep", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if " run(s)" in line]
    assert listed == sorted(p.stem for p in SHIPPED_SWEEPS.glob("*.yaml"))
    _one_line_error(capsys, main(["sweep", "show", "no_such_sweep"]), "no_such_sweep", "mini")
    _one_line_error(capsys, main(["sweep", "mini", "extra"]), "extra")


# --- the paper's leaderboard before any run -----------------------------------------------------------------------

@pytest.mark.skipif(not PAPER_RESULTS.is_dir(), reason=f"the paper's result files are not at {PAPER_RESULTS}")
@pytest.mark.parametrize("root", ["missing", "empty"])
def test_collect_reference_needs_no_runs_folder(tmp_path, capsys, root):
    results = tmp_path / root
    if root == "empty":
        results.mkdir()
    assert main(["collect", "--results", str(results), "--reference",
                 str(PAPER_RESULTS / "linear_transfer_results.txt")]) == 0
    assert (results / "reference.parquet").is_file()
    board = results / "leaderboards" / "leaderboard_resnet50_linear_paper.md"
    assert board.is_file(), sorted(p.name for p in (results / "leaderboards").iterdir())
    assert "acdc" in board.read_text().lower() or "ac/dc" in board.read_text().lower()
    assert "0 completed" in capsys.readouterr().out
    # without the paper's results a root without runs is still an error
    _one_line_error(capsys, main(["collect", "--results", str(tmp_path / "other")]), "--results")



# --- docs/sweeps.md -----------------------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "sweeps.md"


def test_the_sweep_doc_names_every_key_the_parser_accepts():
    from dataclasses import fields

    from transferbench.dispatch.sweep import _CHECKPOINT_KEYS, _KEYS
    from transferbench.dispatch.upstream_spec import UPSTREAM_ENTRY_KEYS
    from transferbench.runspec import HParams

    text = DOC.read_text()
    hparams = {f.name for f in fields(HParams)} - {"solver"}  # the solver is the sweep's `solvers` key
    missing = [k for k in sorted({*_KEYS, *_CHECKPOINT_KEYS, *UPSTREAM_ENTRY_KEYS, *hparams}) if f"`{k}`" not in text]
    assert not missing, f"docs/sweeps.md does not document {missing}"


def test_the_sweep_docs_example_has_the_grid_it_shows(tmp_path, capsys):
    text = DOC.read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    shown = text.split("ends with the grid:\n\n```\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_sweep.yaml").write_text(example)
    assert main(["sweep", "show", str(tmp_path / "my_sweep.yaml")]) == 0
    assert shown.strip() in capsys.readouterr().out
