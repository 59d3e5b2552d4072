"""transferbench.report: collecting records, leaderboards and figures, on synthetic records written to disk.

Every expected number is computed here from the generated ground truth with plain pandas, independently of the
report code.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.text import Text
from scipy.stats import spearmanr

from transferbench.report import (
    DELTA,
    MEAN,
    collect,
    leaderboard,
    method_color,
    plot_accuracy_vs_sparsity,
    plot_delta_heatmap,
    plot_linear_vs_full_ranks,
    plot_upstream_vs_transfer,
    write_figures,
    write_leaderboards,
)
from transferbench.report.palette import METHOD_ORDER, display_name, method_style

ARCH = "resnet50"
TASKS = ["cifar10", "dtd", "pets"]  # pets reports mean per-class accuracy
SPARSE = {"magnitude": [0.8, 0.9], "acdc": [0.8, 0.9], "rigl_erk5x": [0.8, 0.9], "zz_custom": [0.9]}
SEEDS = [0, 1, 2]
UPSTREAM = {("dense", 0.0): 76.13, ("magnitude", 0.8): 75.0, ("magnitude", 0.9): 73.1, ("acdc", 0.8): 76.45,
            ("acdc", 0.9): 75.03, ("rigl_erk5x", 0.8): 76.4, ("rigl_erk5x", 0.9): 74.6}  # zz_custom: unknown
INCOMPLETE = ("linear", "rigl_erk5x", 0.9, "pets")  # never run: the row has no mean
SINGLE_SEED = ("linear", "acdc", 0.8, "dtd")  # only seed 0: no std
SCHEMA0 = ("linear", "magnitude", 0.9, "cifar10", 2)  # written in an older layout, in percent


def _truth() -> pd.DataFrame:
    rng = np.random.default_rng(1234)
    rows = []
    cells = [("dense", 0.0)] + [(m, s) for m, ss in SPARSE.items() for s in ss]
    for mode in ("linear", "full"):
        for m, s in cells:
            for t_i, task in enumerate(TASKS):
                if (mode, m, s, task) == INCOMPLETE:
                    continue
                for seed in SEEDS:
                    if (mode, m, s, task) == SINGLE_SEED and seed != 0:
                        continue
                    top1 = float(0.5 + 0.1 * t_i + 0.05 * (mode == "full") - 0.2 * s * (m == "magnitude")
                                 + 0.03 * (m == "acdc") + rng.normal(0, 0.02))
                    mpc = float(top1 - 0.01 + rng.normal(0, 0.005))
                    rows.append({"task": task, "method": m, "arch": ARCH, "mode": mode, "seed": seed,
                                 "target_sparsity": s, "top1": top1, "mean_per_class_acc": mpc,
                                 "primary": mpc if task == "pets" else top1})
    return pd.DataFrame(rows)


def _record(row: dict, i: int) -> dict:
    cell = f"{row['method']}{int(row['target_sparsity'] * 100)}"
    key = f"{row['task']}.{cell}.{ARCH}.{row['mode']}.s{row['seed']}.{i:04x}"
    upstream = UPSTREAM.get((row["method"], row["target_sparsity"]))
    metric = "mean_per_class" if row["task"] == "pets" else "top1"
    rec = {
        "schema_version": 1, "run_key": key, "status": "completed",
        "created_at": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
        "task": row["task"], "method": row["method"], "arch": ARCH, "mode": row["mode"], "seed": row["seed"],
        "target_sparsity": row["target_sparsity"],
        "checkpoint": {"arch": ARCH, "format": "ist", "identity": f"{row['method']}_{row['target_sparsity']}",
                       "path": "/x.pth", "sha256": "0" * 64},
        "sparsity": {"upstream_measured": row["target_sparsity"], "backbone_before": row["target_sparsity"] + 0.001,
                     "backbone_after": row["target_sparsity"] + 0.001, "per_layer": {}},
        "config": {"hparams": {"solver": "sgd", "epochs": 150}, "device": "cpu"},
        "metrics": {"top1": row["top1"], "mean_per_class_acc": row["mean_per_class_acc"], "primary_metric": metric,
                    "primary": row["primary"], "best_epoch": 3, "best_top1": row["top1"]},
        "curve": [], "timings": {"total_s": 10.0 + i, "training_s": 5.0}, "hardware": {}, "versions": {},
        "predictions": "predictions.npz",
    }
    if upstream is not None:  # two places a record may carry it: the checkpoint (in %) or the top level
        if i % 2:
            rec["checkpoint"]["upstream_top1"] = upstream
        else:
            rec["upstream_top1"] = upstream / 100
    return rec


def _schema0(rec: dict) -> dict:
    """An older layout: metrics at the top level in percent, sparsities in percent, no primary, few fields."""
    m = rec["metrics"]
    return {"schema_version": 0, "status": "completed", "task": rec["task"], "method": rec["method"],
            "arch": rec["arch"], "mode": rec["mode"], "seed": rec["seed"],
            "target_sparsity": rec["target_sparsity"] * 100, "sparsity": 90.1,
            "top1": m["top1"] * 100, "mean_per_class_acc": m["mean_per_class_acc"] * 100}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("results")
    truth = _truth()
    for i, row in enumerate(truth.to_dict("records")):
        rec = _record(row, i)
        key = (row["mode"], row["method"], row["target_sparsity"], row["task"], row["seed"])
        if key == SCHEMA0:
            rec = _schema0(rec)
        elif i == 5:  # optional fields missing
            for field in ("config", "timings", "created_at", "sparsity", "checkpoint", "upstream_top1"):
                rec.pop(field, None)
        elif i == 7:  # a newer schema with extra fields
            rec.update(schema_version=2, something_new={"x": 1})
        d = root / "runs" / f"run{i:04d}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(rec))
    bad = {
        "corrupt": "{ this is not json",
        "failed": json.dumps({**_record(truth.iloc[0].to_dict(), 999), "status": "failed"}),
        "noseed": json.dumps({k: v for k, v in _record(truth.iloc[0].to_dict(), 998).items() if k != "seed"}),
    }
    for name, text in bad.items():
        (root / "runs" / name).mkdir()
        (root / "runs" / name / "result.json").write_text(text)
    (root / "runs" / "partial").mkdir()
    (root / "runs" / "partial" / "predictions.npz").write_bytes(b"x")
    (root / "work" / "unclaimed").mkdir(parents=True)
    (root / "work" / "unclaimed" / "train_state.pt").write_bytes(b"x")
    coll = collect(root)
    return {"root": root, "truth": truth, "coll": coll, "runs": coll.runs}


def test_collect_cli_computes_an_incomplete_rows_mean_only_when_asked(store, tmp_path):
    from transferbench.cli import main

    root = tmp_path / "results"
    shutil.copytree(store["root"], root)
    _, method, sparsity, _ = INCOMPLETE
    truth = store["truth"]
    rows = truth[(truth["mode"] == "linear") & (truth["method"] == method) & (truth["target_sparsity"] == sparsity)]
    expected = 100 * rows.groupby("task")["primary"].mean().mean()  # over the two tasks it has
    for flags, want in (([], None), (["--allow-incomplete-mean"], expected)):
        assert main(["collect", "--results", str(root), *flags]) == 0
        table = pd.read_csv(root / "leaderboards" / f"leaderboard_{ARCH}_linear.csv")
        (mean,) = table[(table["method"] == method) & (table["sparsity"] == sparsity)
                        & (table["column"] == "mean")]["mean"]
        assert math.isnan(mean) if want is None else mean == pytest.approx(want)


def _expected_cells(truth: pd.DataFrame, mode: str, metric: str = "primary") -> pd.DataFrame:
    sub = truth[truth["mode"] == mode]
    return sub.groupby(["method", "target_sparsity", "task"])[metric].agg(["mean", "std", "count"])


# ---------------------------------------------------------------------------------------------------- collect


def test_collect_counts_completed_and_lists_failed(store):
    coll, truth = store["coll"], store["truth"]
    assert coll.n_completed == len(truth)
    reasons = dict(zip(coll.failed["run_key"], coll.failed["reason"], strict=True))
    assert set(reasons) == {"corrupt", "failed", "noseed", "partial", "unclaimed"}
    assert reasons["corrupt"].startswith("failed: unreadable JSON")
    assert reasons["failed"] == "failed: status 'failed'"
    assert reasons["noseed"] == "failed: missing fields: seed"
    assert reasons["partial"].startswith("lost: partial")
    assert reasons["unclaimed"].startswith("unfinished: no record; work/ holds train_state.pt; no sweep job claims")
    states = dict(zip(coll.failed["run_key"], coll.failed["state"], strict=True))
    assert states == {"corrupt": "failed", "failed": "failed", "noseed": "failed", "partial": "lost",
                      "unclaimed": "unfinished"}
    assert "4 failed or lost, 1 unfinished" in coll.summary()


def test_collect_reads_layout_variations(store):
    runs = store["runs"]
    old = runs[runs["schema_version"] == 0]
    assert len(old) == 1
    row = old.iloc[0]
    assert row["target_sparsity"] == pytest.approx(0.9) and row["measured_sparsity"] == pytest.approx(0.901)
    assert row["primary_metric"] == "top1"  # from the task card, since the old layout has none
    assert 0 < row["primary"] < 1 and row["primary"] == row["top1"]
    assert pd.isna(row["solver"]) and pd.isna(row["total_s"]) and pd.isna(row["created_at"])
    assert (runs["schema_version"] == 2).sum() == 1
    sparse = runs[runs["method"] != "zz_custom"]
    known = sparse.dropna(subset=["upstream_top1"])
    assert len(known) >= len(sparse) - 2  # run 5 has no checkpoint block, so no upstream top-1
    assert known["upstream_top1"].between(0.7, 0.77).all()
    assert runs.loc[runs["method"] == "zz_custom", "upstream_top1"].isna().all()
    assert runs["seed"].dtype == "Int64" and runs["primary"].between(0, 1).all()
    pets = runs[(runs["task"] == "pets") & (runs["schema_version"] == 1)]
    assert (pets["primary"] == pets["mean_per_class_acc"]).all()


def test_collection_write(store, tmp_path):
    paths = store["coll"].write(tmp_path / "out")
    assert {p.name for p in paths} == {"runs.parquet", "runs.csv", "failed.csv"}
    back = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    assert len(back) == len(store["truth"]) and list(back.columns) == list(store["runs"].columns)
    assert len(pd.read_csv(tmp_path / "out" / "failed.csv")) == 5
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------ leaderboard


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_leaderboard_cells_match_groupby(store, mode):
    lb = leaderboard(store["runs"], ARCH, mode)
    exp = _expected_cells(store["truth"], mode)
    assert lb.tasks == sorted(TASKS)
    for (method, sparsity, task), e in exp.iterrows():
        mean, std, n = lb.cell((method, sparsity), task)
        assert mean == pytest.approx(e["mean"] * 100, rel=1e-12, abs=1e-12)
        assert n == e["count"]
        if e["count"] > 1:
            assert std == pytest.approx(e["std"] * 100, rel=1e-9)
        else:
            assert math.isnan(std)
    assert len(lb.table) == len(exp.reset_index()[["method", "target_sparsity"]].drop_duplicates())


def test_leaderboard_mean_delta_best_and_incomplete(store):
    truth, runs = store["truth"], store["runs"]
    lb = leaderboard(runs, ARCH, "linear")
    per_task = _expected_cells(truth, "linear")["mean"].unstack("task") * 100
    row_mean = per_task.mean(axis=1)
    complete = per_task.notna().all(axis=1)
    incomplete_row = (INCOMPLETE[1], INCOMPLETE[2])
    assert not complete[incomplete_row]
    assert math.isnan(lb.cell(incomplete_row, MEAN)[0])
    dense = row_mean[("dense", 0.0)]
    for row in per_task.index[complete]:
        assert lb.cell(row, MEAN)[0] == pytest.approx(row_mean[row], rel=1e-12)
        assert lb.cell(row, DELTA)[0] == pytest.approx(row_mean[row] - dense, rel=1e-9, abs=1e-9)
    # the ± of the mean: sqrt(Σ_t s_t²)/T from the per-task stds over seeds
    per_task_std = _expected_cells(truth, "linear")["std"].unstack("task") * 100
    expected_std = math.sqrt(sum(per_task_std.loc[("acdc", 0.9), t] ** 2 for t in TASKS)) / len(TASKS)
    _, std, n = lb.cell(("acdc", 0.9), MEAN)
    assert std == pytest.approx(expected_std, rel=1e-9) and n == 3 and lb.seed_range(("acdc", 0.9), MEAN) == (3, 3)
    # a task with one seed: no ± for the row mean, and n is the range of the per-task seed counts
    single = (SINGLE_SEED[1], SINGLE_SEED[2])
    assert math.isnan(lb.cell(single, MEAN)[1]) and lb.seed_range(single, MEAN) == (1, 3)
    # best marks: the max of each column, nothing else
    for task in TASKS:
        winner = per_task[task].idxmax()
        assert lb.best[task].sum() == 1 and lb.best.loc[winner, task]
    best_mean = row_mean[complete].idxmax()
    assert lb.best.loc[best_mean, MEAN] and lb.best[MEAN].sum() == 1 and lb.best.loc[best_mean, DELTA]
    # allowed: the incomplete row averages the tasks it has
    lb2 = leaderboard(runs, ARCH, "linear", allow_incomplete_mean=True)
    assert lb2.cell(incomplete_row, MEAN)[0] == pytest.approx(per_task.loc[incomplete_row].dropna().mean())


def test_leaderboard_metric_and_task_order(store):
    lb = leaderboard(store["runs"], ARCH, "full", metric="top1", tasks=["pets", "cifar10"])
    assert lb.tasks == ["pets", "cifar10"] and lb.columns == ["pets", "cifar10", MEAN, DELTA]
    exp = _expected_cells(store["truth"], "full", "top1")
    assert lb.cell(("acdc", 0.8), "pets")[0] == pytest.approx(exp.loc[("acdc", 0.8, "pets"), "mean"] * 100)
    with pytest.raises(ValueError, match="unknown metric"):
        leaderboard(store["runs"], ARCH, "full", metric="f1")
    with pytest.raises(ValueError, match="no completed runs"):
        leaderboard(store["runs"], "vit", "full")


def test_leaderboard_renderings(store, tmp_path):
    lb = leaderboard(store["runs"], ARCH, "linear")
    md = lb.to_markdown()

    def shown(row, col, text, n):
        return f"**{text}** (n={n})" if lb.best.loc[row, col] else f"{text} (n={n})"

    for row in [("acdc", 0.9), ("magnitude", 0.9)]:
        mean, std, _ = lb.cell(row, "cifar10")
        assert shown(row, "cifar10", f"{mean:.2f} ± {std:.2f}", 3) in md
    single = (SINGLE_SEED[1], SINGLE_SEED[2])
    assert shown(single, SINGLE_SEED[3], f"{lb.cell(single, SINGLE_SEED[3])[0]:.2f}", 1) in md
    assert "| method | sparsity | cifar10 | dtd | pets | mean | Δ vs dense |" in md
    assert "**" in md and "—" in md and "| rigl_erk5x | 90% |" in md
    tex = lb.to_latex()
    for s in (r"\toprule", r"\midrule", r"\bottomrule", r"$\pm$", "n=3", r"\textbf{", r"rigl\_erk5x", "---",
              r"$\Delta$ vs dense"):
        assert s in tex
    assert "rigl_erk5x" not in tex.replace(r"rigl\_erk5x", "")
    path = lb.to_csv(tmp_path / "lb.csv")
    csv = pd.read_csv(path)
    assert {"method", "sparsity", "column", "mean", "std", "n", "best"} <= set(csv.columns)
    flagged = csv[csv["best"]]
    assert set(flagged["column"]) == {*TASKS, MEAN, DELTA}
    written = write_leaderboards(store["runs"], tmp_path / "lbs")
    assert sorted(p.name for p in written) == sorted(
        f"leaderboard_{ARCH}_{m}{e}" for m in ("full", "linear") for e in (".md", ".csv", ".tex", "_compact.tex"))


def test_leaderboard_duplicates_and_solvers(store):
    runs = store["runs"]
    row = runs[(runs["mode"] == "full") & (runs["method"] == "acdc") & (runs["task"] == "dtd")].iloc[[0]]
    newer = row.assign(run_key="again", primary=0.123, created_at=pd.Timestamp("2030-01-01", tz="UTC"))
    lb = leaderboard(pd.concat([runs, newer]), ARCH, "full")
    assert list(lb.duplicates["run_key"]) == [row["run_key"].iloc[0]]
    assert lb.cell(("acdc", float(row["target_sparsity"].iloc[0])), "dtd")[2] == 3
    lbfgs = runs[runs["mode"] == "linear"].assign(solver="lbfgs", run_key=lambda d: d["run_key"] + "-l")
    both = pd.concat([runs, lbfgs])
    with pytest.raises(ValueError, match="several solvers"):
        leaderboard(both, ARCH, "linear")
    assert leaderboard(both, ARCH, "linear", solver="lbfgs").cell(("dense", 0.0), "dtd")[2] == 3


# ---------------------------------------------------------------------------------------------------- figures


@pytest.fixture(scope="module")
def figures(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("figs")
    runs = store["runs"]
    return {
        "out": out,
        "acc": plot_accuracy_vs_sparsity(runs, ARCH, "full", out / "acc"),
        "heat": plot_delta_heatmap(runs, ARCH, "linear", out / "heat"),
        "ranks": plot_linear_vs_full_ranks(runs, ARCH, out / "ranks"),
        "up": plot_upstream_vs_transfer(runs, ARCH, "full", out / "up"),
    }


def _legend_texts(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
    return [t.get_text() for lg in legends if lg is not None for t in lg.get_texts()]


def _colors_by_method(fig) -> dict[str, tuple]:
    out = {}
    for ax in fig.axes:
        for artist in [*ax.lines, *ax.collections]:
            gid = artist.get_gid() or ""
            if gid.startswith("method:"):
                color = artist.get_color() if hasattr(artist, "get_xdata") else artist.get_facecolor()[0]
                out[gid.split(":", 1)[1]] = tuple(round(float(c), 6) for c in to_rgb(color))
    return out


def test_figure_files(figures):
    for name in ("acc", "heat", "ranks", "up"):
        saved = figures[name]
        assert [p.suffix for p in saved] == [".png", ".pdf"]
        for p in saved:
            assert p.exists() and p.stat().st_size > 5000, p
        fig = saved.figure
        assert fig.get_figwidth() <= 7.0 + 1e-9
        sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
        assert sizes and min(sizes) >= 7


def test_accuracy_figure_legend_and_colors(figures, store):
    fig = figures["acc"].figure
    labels = _legend_texts(fig)
    assert set(labels) == {display_name(m) for m in ("dense", *SPARSE)}
    assert labels[0] == "Dense"
    acc, ranks, up = (_colors_by_method(figures[k].figure) for k in ("acc", "ranks", "up"))
    for method in SPARSE:
        assert acc[method] == ranks[method] == tuple(round(c, 6) for c in method_color(method))
    assert set(up) == {m for m, _ in UPSTREAM}
    for method in up:
        assert up[method] == acc[method]
    dense = next(ln for ln in fig.axes[0].lines if ln.get_gid() == "method:dense")
    assert dense.get_linestyle() == "--"
    # the plotted means are the leaderboard's task means
    lb = leaderboard(store["runs"], ARCH, "full")
    line = next(ln for ln in fig.axes[0].lines if ln.get_gid() == "method:acdc")
    assert np.allclose(line.get_ydata(), lb.table[(MEAN, "mean")].loc["acdc"].to_numpy())


def _expected_rows() -> list[tuple[str, float]]:
    """The sparse (method, sparsity) rows the synthetic store has, in the fixed method order of every figure."""
    rows = [(m, s) for m, ss in SPARSE.items() for s in ss]
    known = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(rows, key=lambda r: (r[0] not in known, known.get(r[0], 0), r[0], r[1]))


def test_upstream_figure_legend_names_every_method_with_an_upstream_top1(figures):
    labels = _legend_texts(figures["up"].figure)
    assert sorted(labels) == sorted({display_name(m) for m, _ in UPSTREAM}) and labels[0] == "Dense"
    assert "zz_custom" not in labels  # its upstream top-1 is unknown, so it has no point


def test_heatmap_rows_are_the_sparse_rows(figures):
    ax = figures["heat"].figure.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert shown == [f"{display_name(m)} {s * 100:g}%" for m, s in _expected_rows()]
    assert [t.get_text() for t in ax.get_xticklabels()] == [*sorted(TASKS), MEAN]


def test_rank_figure_labels_every_row(figures):
    texts = [t.get_text() for t in figures["ranks"].figure.axes[0].texts]
    # complete in both modes: every row but the one with a linear task missing
    rows = [("dense", 0.0), *(r for r in _expected_rows() if (r[0], r[1]) != INCOMPLETE[1:3])]
    for method, sparsity in rows:
        label = "Dense" if method == "dense" else f"{display_name(method)} {sparsity * 100:g}%"
        assert sum(t.endswith(f"  {label}") for t in texts) == 1, label  # right side
        assert sum(t.startswith(f"{label}  ") for t in texts) == 1, label  # left side
    assert len(texts) == 2 * len(rows)


def test_column_width_figures_are_a_column_wide(figures):
    from PIL import Image

    from transferbench.report.figstyle import COLUMN_WIDTH_IN, DPI

    for name in ("acc", "ranks", "up"):
        saved = figures[name]
        assert saved.figure.get_figwidth() == COLUMN_WIDTH_IN
        with Image.open(saved[0]) as png:
            width_in = png.size[0] / DPI
        # bbox="tight" trims the margins; nothing (a legend, a label) may spill past the column
        assert COLUMN_WIDTH_IN - 0.2 <= width_in <= COLUMN_WIDTH_IN + 0.02, (name, width_in)


def test_upstream_figure_spearman(figures, store):
    lb = leaderboard(store["runs"], ARCH, "full")
    means = lb.table[(MEAN, "mean")]
    keys = [k for k in UPSTREAM if k in means.index]
    rho = spearmanr([UPSTREAM[k] for k in keys], [means[k] for k in keys]).statistic
    title = figures["up"].figure.axes[0].get_title()
    assert f"Spearman ρ = {rho:.2f}" in title and f"n = {len(keys)}" in title


def _methods_seen_together() -> dict[str, set[str]]:
    """The method sets that can share a figure, read from where they are defined (not from the palette)."""
    import yaml

    from transferbench.dispatch import load_sweep
    from transferbench.pruning.factory import METHODS

    table = Path(__file__).resolve().parent.parent / "transferbench" / "shipped" / "checkpoints" / "table.yaml"
    registry = {spec["method"] for spec in yaml.safe_load(table.read_text())}
    return {"registry": registry, "trained": set(METHODS), "demo": {c.method for c in load_sweep("demo").checkpoints}}


def test_palette_distinct_colours_within_each_set_that_appears_together():
    sets = _methods_seen_together()
    assert {"cram", "mfac", "str"} <= sets["registry"] and "cram" in sets["demo"]
    for name, methods in sets.items():
        colours = {m: method_color(m) for m in methods}
        assert len(set(colours.values())) == len(methods), (name, colours)
    # across the sets, colour plus marker plus line style still tells every method apart
    every = set().union(*sets.values()) | set(METHOD_ORDER)
    looks = {(method_style(m).color, method_style(m).marker, method_style(m).linestyle) for m in every}
    assert len(looks) == len(every)
    assert len({method_style(m).marker for m in every}) == len(every)


def test_palette_dense_colour_is_its_own():
    others = [m for m in METHOD_ORDER if m != "dense"] + [f"custom_{i}" for i in range(50)]
    assert method_color("dense") not in {method_color(m) for m in others}
    assert method_style("dense").linestyle == "--"
    assert all(method_style(m).linestyle != ":" for m in others)  # dotted is the paper's


def test_palette_stable_and_colour_blind_palette():
    import seaborn as sns

    palette = {tuple(float(c) for c in rgb) for rgb in sns.color_palette("colorblind", 10)}
    assert all(method_color(m) in palette for m in METHOD_ORDER if m != "dense")
    assert method_style("zz_custom") == method_style("zz_custom")
    assert all(method_style(m).color == method_color(m) for m in METHOD_ORDER)


def test_write_figures(store, tmp_path):
    paths = write_figures(store["runs"], tmp_path)
    names = {p.name for p in paths}
    for kind in ("accuracy_vs_sparsity", "delta_heatmap", "upstream_vs_transfer"):
        for mode in ("linear", "full"):
            assert {f"{ARCH}_{mode}_{kind}.png", f"{ARCH}_{mode}_{kind}.pdf"} <= names
    assert {f"{ARCH}_linear_vs_full_ranks.png", f"{ARCH}_linear_vs_full_ranks.pdf"} <= names
    assert all(p.stat().st_size > 5000 for p in paths)
