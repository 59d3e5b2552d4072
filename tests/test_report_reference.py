"""The paper's published results as a reference: import, side-by-side leaderboards and figures, compare.

Expected numbers are computed here from the raw csv files with plain pandas and a label mapping written out in
this file, independently of transferbench.report.reference.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_data import PAPER_RESULTS
from scipy.stats import ttest_ind

from transferbench.cli import main
from transferbench.report import leaderboard, plot_accuracy_vs_sparsity, write_figures, write_leaderboards
from transferbench.report.compare import compare, to_markdown, welch
from transferbench.report.palette import display_name
from transferbench.report.reference import infer_mode_arch, read_reference, read_references
from transferbench.report.select import arch_family

REF = PAPER_RESULTS
FILES = {
    "linear_transfer_results.txt": ("linear", "resnet50"),
    "full_transfer_results.txt": ("full", "resnet50"),
    "linear_mobilenet_transfer_results.txt": ("linear", "mobilenet"),
    "full_mobilenet_transfer_results.txt": ("full", "mobilenet"),
}
METHODS = {
    "Dense": "dense",
    "AC/DC": "acdc",
    "RigL ERK 1x": "rigl_erk1x",
    "RigL ERK 5x": "rigl_erk5x",
    "STR": "str",
    "WoodFisher": "woodfisher",
    "LTH-T": "lth_t",
    "M-FAC": "mfac",
}
TASKS = {"SUN": "sun397"}  # every other label is the task name

needs_ref = pytest.mark.skipif(not REF.is_dir(), reason=f"the paper's result files are not at {REF}")


def _raw(name: str) -> pd.DataFrame:
    df = pd.read_csv(REF / name, usecols=range(5))  # usecols: the trailing comma of full_transfer_results.txt
    return df.assign(
        task=df["dset"].replace(TASKS),
        method=df["model"].map(METHODS),
        seed=df["seed"].str.removeprefix("seed_").astype(int),
        sparsity=df["sparsity"].round(6),
    )


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    if not REF.is_dir():
        pytest.skip(f"the paper's result files are not at {REF}")
    return read_references(sorted(REF / f for f in FILES))


def _clean_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line[:4].isdigit()]  # drop timestamped log lines
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------------------------------- import


@needs_ref
@pytest.mark.parametrize("name", sorted(FILES))
def test_import_reproduces_per_cell_means(paper, name):
    mode, arch = FILES[name]
    raw = _raw(name)
    assert raw["method"].notna().all()
    mine = paper[(paper["arch"] == arch) & (paper["mode"] == mode)]
    # a (task, method, sparsity, seed) the file repeats is one run: the mean of its rows
    dedup = raw.groupby(["task", "method", "sparsity", "seed"], as_index=False)["val_acc"].mean()
    assert len(mine) == len(dedup) == len(raw) - (12 if name == "full_mobilenet_transfer_results.txt" else 0)
    assert set(mine["source"]) == {"paper"} and mine["primary"].between(0, 1).all()
    expected = dedup.groupby(["method", "sparsity", "task"])["val_acc"].agg(["mean", "std", "count"])
    lb = leaderboard(paper, arch, mode, source="paper")
    assert sorted(lb.tasks) == sorted(raw["task"].unique()) and len(lb.tasks) == 12
    for (method, sparsity, task), e in expected.iterrows():
        mean, std, n = lb.cell((method, sparsity), task)
        assert mean == pytest.approx(e["mean"] * 100, abs=1e-9), (method, sparsity, task)
        assert n == e["count"]
        assert math.isnan(std) if e["count"] < 2 else std == pytest.approx(e["std"] * 100, rel=1e-9)
    # the columns of a run: the task's reported metric, seeds as integers, ImageNet top-1 from the registry
    row = mine[(mine["task"] == "sun397") & (mine["method"] == "dense")].iloc[0]
    assert row["seed"] in set(raw["seed"]) and row["primary_metric"] == "top1" and row["top1"] == row["primary"]
    if arch == "resnet50":
        assert row["upstream_top1"] == pytest.approx(0.7613)
        rigl = mine[mine["method"].isin(["rigl_erk1x", "rigl_erk5x"])]
        assert set(rigl["method"]) == {"rigl_erk1x", "rigl_erk5x"}  # 1x and 5x stay different methods


@needs_ref
def test_mode_and_arch_from_names_or_hints(tmp_path):
    for name, expected in FILES.items():
        assert infer_mode_arch(Path(name)) == expected
    assert infer_mode_arch(Path("mine.csv"), "full", "mobilenet") == ("full", "mobilenet")
    renamed = tmp_path / "mine.csv"
    renamed.write_text((REF / "linear_mobilenet_transfer_results.txt").read_text())
    df = read_reference(renamed, mode="linear", arch="mobilenet")
    assert len(df) == len(_raw("linear_mobilenet_transfer_results.txt"))


def test_arch_family_groups_variants_with_their_base_arch():
    # one rule for the registry and the report (transferbench.vocabulary), torch-free
    expected = {"resnet50": "resnet50", "resnet50_rigl": "resnet50", "resnet50_str": "resnet50",
                "mobilenet": "mobilenet", "mobilenet_str": "mobilenet", "resnet_tiny": "resnet_tiny"}
    assert {arch: arch_family(arch) for arch in expected} == expected


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        (
            "linear_transfer_results.txt",
            "dset,model,sparsity,seed,val_acc\ncifar10,GraSP,0.9,seed_21,0.9\n",
            ["'GraSP'", "line 2", "linear_transfer_results.txt"],
        ),
        (
            "linear_transfer_results.txt",
            "dset,model,sparsity,seed,val_acc\nimagenet,Dense,0.0,seed_21,0.7\n",
            ["'imagenet'", "line 2"],
        ),
        ("linear_transfer_results.txt", "task,method,acc\ncifar10,Dense,0.9\n", ["header", "dset,model,sparsity"]),
        (
            "linear_transfer_results.txt",
            "dset,model,sparsity,seed,val_acc\ncifar10,Dense,0.0,seed_21,93.1\n",
            ["val_acc '93.1'", "fraction"],
        ),
        (
            "linear_transfer_results.txt",
            "dset,model,sparsity,seed,val_acc\ncifar10,Dense,0.0,21st,0.9\n",
            ["seed '21st'"],
        ),
        (
            "results.txt",
            "dset,model,sparsity,seed,val_acc\ncifar10,Dense,0.0,seed_21,0.9\n",
            ["results.txt", "--reference-mode"],
        ),
        (
            "linear_mine.txt",
            "dset,model,sparsity,seed,val_acc\ncifar10,Dense,0.0,seed_21,0.9\n",
            ["linear_mine.txt", "--reference-arch"],
        ),
        ("linear_transfer_results.txt", "", ["empty"]),
    ],
)
def test_bad_reference_files_fail_in_one_line(capsys, tmp_path, name, text, needles):
    path = tmp_path / name
    path.write_text(text)
    (tmp_path / "runs").mkdir()
    code = main(["collect", "--results", str(tmp_path), "--reference", str(path)])
    _clean_error(capsys, code, *needles)
    assert not (tmp_path / "leaderboards").exists()


def test_missing_reference_file_and_source_without_paper(capsys, tmp_path):
    (tmp_path / "runs").mkdir()
    _clean_error(
        capsys, main(["collect", "--results", str(tmp_path), "--reference", str(tmp_path / "nope.txt")]), "nope.txt"
    )
    _clean_error(capsys, main(["figures", "--results", str(tmp_path), "--source", "paper"]), "--reference")
    _clean_error(capsys, main(["compare", "--results", str(tmp_path)]), "--reference")


# ------------------------------------------------------------------------------------ ours next to the paper's


def _ours_from_paper(paper: pd.DataFrame, shift: dict | None = None) -> pd.DataFrame:
    """Our runs = the paper's linear ResNet50 rows, RigL under its own arch name, ``shift`` added per cell."""
    ours = paper[(paper["arch"] == "resnet50") & (paper["mode"] == "linear")].copy()
    ours["source"] = "ours"
    ours["run_key"] = "ours-" + ours["run_key"]
    ours.loc[ours["method"].str.startswith("rigl"), "arch"] = "resnet50_rigl"
    for (task, method, sparsity), pp in (shift or {}).items():
        sel = (ours["task"] == task) & (ours["method"] == method) & (ours["target_sparsity"] == sparsity)
        assert sel.sum() >= 2
        ours.loc[sel, "primary"] += pp / 100
    return ours


@needs_ref
def test_side_by_side_leaderboard(paper, tmp_path):
    ours = _ours_from_paper(paper).query("task in ['cifar10', 'dtd']")
    both = pd.concat([ours, paper])
    lb = leaderboard(both, "resnet50", "linear", source="both")
    assert lb.tasks == ["cifar10", "dtd"]  # the tasks both sources have
    assert set(lb.table.index.get_level_values("source")) == {"ours", "paper"}
    for row in [("rigl_erk1x", 0.9), ("dense", 0.0)]:
        assert lb.cell((*row, "ours"), "dtd") == pytest.approx(lb.cell((*row, "paper"), "dtd"), nan_ok=True)
    md = lb.to_markdown()
    assert "| method | sparsity | source | cifar10 | dtd | mean | Δ vs dense |" in md
    assert "| rigl_erk1x | 90% | paper |" in md and "ours vs the paper's" in md
    assert r"\begin{tabular}{lllrrrr}" in lb.to_latex()
    with pytest.raises(ValueError, match="mix our runs"):
        leaderboard(both, "resnet50", "linear")
    names = {p.name for p in write_leaderboards(both, tmp_path)}
    assert {
        "leaderboard_resnet50_linear_ours_vs_paper.md",
        "leaderboard_resnet50_full_paper.md",
        "leaderboard_mobilenet_linear_paper.csv",
    } <= names
    assert not any(n.startswith("leaderboard_resnet50_linear.") for n in names)
    ours_only = {p.name for p in write_leaderboards(both, tmp_path / "o", source="ours")}
    assert ours_only == {f"leaderboard_resnet50_linear{e}" for e in (".md", ".csv", ".tex", "_compact.tex")}


@needs_ref
def test_side_by_side_figures(paper, tmp_path):
    ours = _ours_from_paper(paper)
    both = pd.concat([ours, paper[paper["arch"] == "resnet50"]]).query("task in ['cifar10', 'dtd']")  # fast
    saved = plot_accuracy_vs_sparsity(both, "resnet50", "linear", tmp_path / "acc", source="both")
    for p in saved:
        assert p.exists() and p.stat().st_size > 5000
    legend = {t.get_text() for lg in saved.figure.legends for t in lg.get_texts()}
    methods = set(paper.loc[paper["arch"] == "resnet50", "method"])
    assert legend == {display_name(m) for m in methods} | {f"{display_name(m)} (paper)" for m in methods}
    names = {p.name for p in write_figures(both, tmp_path / "figs")}
    assert {
        "resnet50_linear_ours_vs_paper_accuracy_vs_sparsity.png",
        "resnet50_linear_ours_vs_paper_delta_heatmap.pdf",
        "resnet50_linear_upstream_vs_transfer.png",
        "resnet50_linear_paper_upstream_vs_transfer.png",
        "resnet50_full_paper_accuracy_vs_sparsity.png",
        "resnet50_paper_linear_vs_full_ranks.png",
    } <= names


@needs_ref
def test_side_by_side_figure_with_rows_missing_a_task(paper, tmp_path, caplog):
    ours = _ours_from_paper(paper).query("task in ['cifar10', 'dtd']")
    ours = ours[~((ours["method"] == "acdc") & (ours["task"] == "dtd"))]  # our acdc rows have no mean over tasks
    both = pd.concat([ours, paper[paper["arch"] == "resnet50"]]).query("task in ['cifar10', 'dtd']")
    logger = logging.getLogger("transferbench")  # a CLI test before this one may have stopped it propagating
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="transferbench"):
            saved = plot_accuracy_vs_sparsity(both, "resnet50", "linear", tmp_path / "acc", source="both")
    finally:
        logger.removeHandler(caplog.handler)
    assert all(p.exists() for p in saved)
    left_out = [r.getMessage() for r in caplog.records if "leaves out" in r.getMessage()]
    assert len(left_out) == 1 and "acdc" in left_out[0] and "(paper)" not in left_out[0], left_out


# ----------------------------------------------------------------------------------------------------- compare


def test_welch_matches_scipy():
    a, b = np.array([0.71, 0.73, 0.72, 0.70]), np.array([0.69, 0.70, 0.695])
    se, t, df, p = welch(a.mean(), a.std(ddof=1), 4, b.mean(), b.std(ddof=1), 3)
    ref = ttest_ind(a, b, equal_var=False)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue) and df == pytest.approx(ref.df)
    assert se == pytest.approx(math.sqrt(a.var(ddof=1) / 4 + b.var(ddof=1) / 3))
    assert all(math.isnan(x) for x in welch(0.7, math.nan, 1, 0.7, 0.01, 5))
    assert welch(0.7, 0.0, 3, 0.6, 0.0, 3)[3] == 0.0 and welch(0.7, 0.0, 3, 0.7, 0.0, 3)[3] == 1.0


@needs_ref
def test_compare_flags_only_the_shifted_cell(paper):
    far = ("dtd", "acdc", 0.9)  # std over seeds ≈ 0.2 pp: +5 pp is far outside
    near = ("cifar10", "woodfisher", 0.9)
    ours = _ours_from_paper(paper, {far: 5.0})
    sel = (ours["task"] == near[0]) & (ours["method"] == near[1]) & (ours["target_sparsity"] == near[2])
    spread = ours.loc[sel, "primary"].std()
    ours.loc[sel, "primary"] += 0.2 * spread  # a fifth of a standard deviation: within noise
    one_seed = ours[(ours["task"] == "pets") & (ours["method"] == "dense")].index[1:]
    ours = ours.drop(index=one_seed)
    table = compare(pd.concat([ours, paper]))
    cell = table.set_index(["task", "method", "sparsity"])
    assert cell.loc[far, "verdict"] == "outside" and cell.loc[far, "diff"] == pytest.approx(5.0)
    assert cell.loc[near, "verdict"] == "within" and cell.loc[near, "p"] > 0.5
    # one seed of ours against the paper's five: a prediction-interval test, and our seed is one of the paper's
    assert cell.loc[("pets", "dense", 0.0), "test"] == "prediction" and cell.loc[("pets", "dense", 0.0), "ours_n"] == 1
    assert cell.loc[("pets", "dense", 0.0), "verdict"] == "within"
    untouched = table[~table.set_index(["task", "method", "sparsity"]).index.isin([far, near, ("pets", "dense", 0.0)])]
    assert (untouched["verdict"] == "within").all() and np.allclose(untouched["diff"], 0.0)
    assert set(table["arch"]) == {"resnet50"}  # resnet50_rigl runs are compared with the paper's ResNet50 RigL
    assert (cell.loc[("dtd", "rigl_erk5x", 0.9), "paper_n"]) == 5
    raw = _raw("linear_transfer_results.txt")
    e = raw[(raw["task"] == "dtd") & (raw["method"] == "acdc") & (raw["sparsity"] == 0.9)]["val_acc"]
    assert cell.loc[far, "paper_mean"] == pytest.approx(e.mean() * 100)
    assert cell.loc[far, "ours_mean"] == pytest.approx(e.mean() * 100 + 5)
    md = to_markdown(table)
    assert "| resnet50 | linear | sgd | dtd | acdc | 90% |" in md and "Welch" in md and "+5.00" in md


@needs_ref
def test_compare_command(capsys, tmp_path, paper):
    ours = _ours_from_paper(paper, {("dtd", "acdc", 0.9): 5.0}).query("task == 'dtd'")
    for i, row in enumerate(ours.to_dict("records")):
        rec = {
            "schema_version": 1,
            "status": "completed",
            "run_key": f"r{i}",
            "task": row["task"],
            "method": row["method"],
            "arch": row["arch"],
            "mode": row["mode"],
            "seed": int(row["seed"]),
            "target_sparsity": row["target_sparsity"],
            "metrics": {
                "top1": row["primary"],
                "mean_per_class_acc": row["primary"],
                "primary": row["primary"],
                "primary_metric": "top1",
            },
            "config": {"hparams": {"solver": "sgd"}},
        }
        (tmp_path / "runs" / f"r{i}").mkdir(parents=True)
        (tmp_path / "runs" / f"r{i}" / "result.json").write_text(json.dumps(rec))
    code = main(["compare", "--results", str(tmp_path), "--reference", str(REF / "linear_transfer_results.txt")])
    out = capsys.readouterr().out
    assert code == 0
    table = pd.read_csv(tmp_path / "compare" / "compare.csv")
    assert len(table) == ours.groupby(["method", "target_sparsity"]).ngroups
    assert list(table.loc[table["verdict"] == "outside", "method"]) == ["acdc"]
    assert "1 outside seed noise" in out and (tmp_path / "compare" / "compare.md").is_file()
    # collect --reference keeps the paper's rows, so later commands need no --reference
    assert main(["collect", "--results", str(tmp_path), "--reference", str(REF / "linear_transfer_results.txt")]) == 0
    assert (tmp_path / "reference.parquet").is_file()
    assert (tmp_path / "leaderboards" / "leaderboard_resnet50_linear_ours_vs_paper.md").is_file()
    assert main(["compare", "--results", str(tmp_path), "--out", str(tmp_path / "again")]) == 0
    assert pd.read_csv(tmp_path / "again" / "compare.csv").equals(table)


def test_corrupt_saved_reference_is_one_line_error(capsys, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "reference.parquet").write_text("not parquet")
    code = main(["figures", "--results", str(tmp_path)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln[:4].isdigit()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {tmp_path / 'reference.parquet'} is not a readable Parquet file")
    assert "rerun `transferbench collect --reference FILE...`" in err[0]
