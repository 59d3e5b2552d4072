"""Figures for a paper: own methods' colours, display names and --label, the broken axis for outliers, labels that
do not overlap, tick labels of close sparsities, and the wording of axis labels. Expected values are written out by
hand (the palette's hex colours, a hand-computed Tukey fence) or measured on the drawn figure."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.text import Text

from transferbench.errors import TransferbenchError
from transferbench.report.figures import (
    _tick_labels,
    accuracy_vs_sparsity_figure,
    colour_limit,
    place_labels,
    split_range,
    upstream_vs_transfer_figure,
    write_figures,
)
from transferbench.report.palette import (
    EXTRA_COLORS,
    PALETTE_INDEX,
    display_name,
    method_color,
    parse_labels,
    use_methods,
)

TASKS = ("cifar10", "dtd")


def _runs(curves: dict[str, dict[float, float]], upstream: dict[str, float] | None = None) -> pd.DataFrame:
    """One seed per (method, sparsity, task), both tasks at the curve's accuracy (a fraction)."""
    rows = []
    for method, curve in curves.items():
        for sparsity, acc in curve.items():
            for task in TASKS:
                rows.append({"run_key": f"{method}-{sparsity}-{task}", "task": task, "method": method,
                             "arch": "resnet50", "mode": "linear", "seed": 0, "target_sparsity": sparsity,
                             "primary": acc, "top1": acc, "mean_per_class_acc": acc, "primary_metric": "top1",
                             "solver": None, "source": "ours",
                             "upstream_top1": (upstream or {}).get(f"{method}{sparsity}", np.nan),
                             "created_at": pd.Timestamp("2026-01-01", tz="UTC")})
    return pd.DataFrame(rows)


def test_own_methods_get_colours_no_listed_method_has():
    listed = {method_color(m) for m in PALETTE_INDEX} | {method_color("dense")}
    use_methods(["dense", "acdc", "mine", "ours", *(f"own{i}" for i in range(12))])
    try:
        own = [method_color(m) for m in ["mine", "ours", *(f"own{i}" for i in range(12))]]
        assert len(set(own)) == len(own)  # 14 own methods, 14 colours
        assert not set(own) & listed
        # in name order (mine, ours, own0, own1, own10, ...), the first ones taking EXTRA_COLORS in turn
        assert method_color("mine") == to_rgb(EXTRA_COLORS[0])
        assert method_color("ours") == to_rgb(EXTRA_COLORS[1])
        assert method_color("own0") == to_rgb(EXTRA_COLORS[2])
        assert method_color("acdc") == tuple(sns.color_palette("colorblind", 10)[2])  # listed ones unchanged
    finally:
        use_methods([])
    assert method_color("mine") not in listed  # unregistered: a hashed EXTRA colour, still not a listed one


def test_display_names_and_labels():
    assert display_name("rigl_erk1x") == "RigL ERK 1x"
    assert display_name("lth_t") == "LTH-T"
    assert display_name("acdc") == "AC/DC"
    assert display_name("mine") == "mine"
    assert display_name("acdc", {"acdc": "ACDC (ours)"}) == "ACDC (ours)"
    assert parse_labels(["mine=Our method", " ours = Theirs "]) == {"mine": "Our method", "ours": "Theirs"}
    for bad in ("mine", "=x", "mine="):
        with pytest.raises(TransferbenchError, match=r"--label .*KEY=TEXT"):
            parse_labels([bad])


def test_split_range_tukey_fence():
    # sorted 40 70 71 72 74 75 75 76: q1 = 70.75, q3 = 75 → IQR 4.25, fence 70.75 - 6.375 = 64.375; the rest
    # (70..76) spans 6 of 36 points, under 30%
    values = [70.0, 71.0, 72.0, 74.0, 75.0, 75.0, 76.0, 40.0]
    assert np.percentile(values, 25) == 70.75 and np.percentile(values, 75) == 75.0
    assert split_range(values) == ((70.0, 76.0), (40.0, 40.0))
    assert split_range([70.0, 71.0, 72.0, 74.0, 75.0, 76.0, 67.0]) is None  # fence 70.5 - 6 = 64.5: none below
    # 50 is below the fence (71.5 - 7.5 = 64) but the rest, 70..79, spans 9 of 29 points: over 30%, one panel
    assert split_range([70.0, 71.0, 72.0, 73.0, 74.0, 75.0, 76.0, 77.0, 78.0, 79.0, 50.0]) is None
    assert split_range([70.0, 71.0, 40.0]) is None  # too few points to call one an outlier


def test_outlier_panel_keeps_the_main_range_readable():
    runs = _runs({"dense": {0.0: 0.75}, "acdc": {0.8: 0.755, 0.9: 0.752, 0.95: 0.748},
                  "rigl_erk1x": {0.8: 0.745, 0.9: 0.736, 0.95: 0.723},
                  "lth_t": {0.8: 0.74, 0.9: 0.40, 0.95: 0.16}})
    fig = accuracy_vs_sparsity_figure(runs, "resnet50", "linear")
    main, low = (ax for ax in fig.axes if ax.get_label() != "<colorbar>")
    lo, hi = main.get_ylim()
    assert 70 < lo < 72.3 and 75.5 < hi < 77  # the main panel spans the sparse methods and dense, not LTH-T
    lo, hi = low.get_ylim()
    assert lo < 16 and 40 < hi < 72.3
    lth = next(ln for ln in main.lines if ln.get_gid() == "method:lth_t")
    assert list(lth.get_markevery()) == [0]  # 40 and 16 have their markers in the lower panel only
    assert fig.get_supylabel() == "Mean accuracy (%)\nover 2 tasks"  # one label for both panels


def test_one_task_is_singular_and_the_y_label_clears_the_title():
    runs = _runs({"dense": {0.0: 0.75}, "acdc": {0.8: 0.74, 0.9: 0.73}})
    runs = runs[runs["task"] == "dtd"]
    fig = accuracy_vs_sparsity_figure(runs, "resnet50", "linear")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "Mean accuracy (%)\nover 1 task"
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    assert ax.yaxis.label.get_window_extent(renderer).y1 < ax.title.get_window_extent(renderer).y0


def test_close_sparsities_get_their_tick_labels_on_two_lines():
    assert _tick_labels([30.0, 75.0, 89.0, 90.0]) == ["30", "75", "89", "\n90"]
    assert _tick_labels([80.0, 90.0, 95.0, 98.0]) == ["80", "90", "95", "98"]


def test_place_labels_never_overlap():
    fig = Figure(figsize=(3.4, 2.5))
    ax = fig.add_subplot()
    points = [(75.0 + 0.05 * i, 75.0 + 0.04 * (i % 3)) for i in range(6)] + [(70.0, 70.0), (77.0, 76.0)]
    ax.scatter([x for x, _ in points], [y for _, y in points])
    ax.set_xlim(69, 78)
    ax.set_ylim(69, 77)
    placed = place_labels(ax, [(f"{80 + i}", xy) for i, xy in enumerate(points)], fontsize=7)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    boxes = [Text.get_window_extent(a, renderer) for a in placed]  # the text, not its leader line
    clear = [not a.overlaps(b) for a, b in itertools.combinations(boxes, 2)]
    assert len(placed) == len(points) and sum(clear) >= len(clear) - 2  # 6 points 0.05 apart: at most a near miss
    spread = _runs({"dense": {0.0: 0.745}, "acdc": {0.8: 0.755, 0.9: 0.753}, "rigl_erk5x": {0.8: 0.750, 0.9: 0.7525}},
                   upstream={"dense0.0": 0.7613, "acdc0.8": 0.7645, "acdc0.9": 0.7503, "rigl_erk5x0.8": 0.7640,
                             "rigl_erk5x0.9": 0.7464})
    fig = upstream_vs_transfer_figure(spread, "resnet50", "linear")
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    boxes = [Text.get_window_extent(t, renderer) for t in fig.axes[0].texts]
    assert len(boxes) == 4 and not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert "\nSpearman" in fig.axes[0].get_title()  # on its own line: a long title stays inside the column


def test_write_figures_labels_and_own_colours(tmp_path):
    runs = _runs({"dense": {0.0: 0.75}, "lth_t": {0.8: 0.74, 0.9: 0.73}, "mine": {0.8: 0.745, 0.9: 0.74},
                  "ours": {0.8: 0.742, 0.9: 0.735}})
    try:
        paths = write_figures(runs, tmp_path, labels={"mine": "Our method"})
        fig = accuracy_vs_sparsity_figure(runs, "resnet50", "linear", labels={"mine": "Our method"})
        legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
        assert legend == ["Dense", "LTH-T", "Our method", "ours"]
        colours = {ln.get_gid(): ln.get_color() for ln in fig.axes[0].lines if ln.get_gid()}
        assert len({tuple(to_rgb(c)) for c in colours.values()}) == 4
        assert {p.suffix for p in paths} == {".png", ".pdf"}
    finally:
        use_methods([])


def test_label_flag_errors_in_one_line(capsys, tmp_path):
    from transferbench.cli import main

    code = main(["figures", "--results", str(tmp_path), "--label", "mine"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln[:4].isdigit()]
    assert code == 2 and len(err) == 1 and "--label 'mine'" in err[0] and "KEY=TEXT" in err[0]
    assert not (tmp_path / "figures").exists()


def test_upstream_at_chance_goes_to_a_panel_left_of_a_broken_axis():
    # LTH's upstream models at chance (7% and 28% top-1) next to nine checkpoints at 90-97%
    runs = _runs({"dense": {0.0: 0.72}, "gmp": {0.8: 0.716, 0.9: 0.733}, "acdc": {0.8: 0.726, 0.9: 0.712},
                  "rigl": {0.8: 0.735, 0.9: 0.734}, "cram": {0.8: 0.756, 0.9: 0.726}, "lth": {0.8: 0.726, 0.9: 0.66}},
                 upstream={"dense0.0": 0.966, "gmp0.8": 0.956, "gmp0.9": 0.940, "acdc0.8": 0.958, "acdc0.9": 0.922,
                           "rigl0.8": 0.938, "rigl0.9": 0.907, "cram0.8": 0.933, "cram0.9": 0.919,
                           "lth0.8": 0.285, "lth0.9": 0.07})
    fig = upstream_vs_transfer_figure(runs, "resnet50", "linear")
    main, low = fig.axes
    assert 89 < main.get_xlim()[0] < 90.7 and 96.6 < main.get_xlim()[1] < 98  # 90.7..96.6 with a margin
    assert low.get_xlim()[0] < 7 and 28.5 < low.get_xlim()[1] < 40
    assert "Spearman ρ" in fig.get_suptitle() and main.get_xlabel() == "Upstream top-1 (%)"
    assert sorted(t.get_text() for t in low.texts) == ["80", "90"]  # LTH's labels in its own panel
    assert sorted(t.get_text() for t in main.texts) == ["80"] * 4 + ["90"] * 4


def test_beyond_figure_draws_each_method_in_its_line_style():
    from transferbench.report.palette import method_style
    from transferbench.report.predictions import beyond_figure

    cells = pd.DataFrame([{"arch": "resnet_tiny", "mode": "linear", "solver": "sgd", "task": "digits", "method": m,
                           "sparsity": s, "churn": 0.1 + s / 10, "delta_ece": 0.01, "entropy_shift": 0.02,
                           "pie_fraction": 0.05} for m in ("gmp", "rigl", "lth") for s in (0.8, 0.9)])
    fig = beyond_figure(cells, "resnet_tiny", "linear")
    lines = {to_rgb(ln.get_color()): ln for ln in fig.axes[0].lines if len(ln.get_xdata()) == 2}
    for method in ("gmp", "rigl", "lth"):
        dashed = lines[method_color(method)].get_linestyle() != "-"
        assert dashed == (method_style(method).linestyle == "-.")  # rigl and lth dash-dotted, as in every figure
    assert [t.get_text() for lg in fig.legends for t in lg.get_texts()] == ["GMP", "RigL", "LTH"]


def test_heatmap_colours_are_not_spent_on_a_few_collapsed_cells():
    # |Δ| 0.5..3 and two collapsed cells (45, 60): −|Δ| sorted −60 −45 −3 −2.5 −2 −1.5 −1 −0.5 has q1 = −13.5,
    # q3 = −1.375, fence −13.5 − 1.5·12.125 = −31.7: both collapsed cells are beyond it; the others span 2.5 of 59.5
    assert colour_limit(np.array([1.0, 2.0, -3.0, 2.5, 1.5, -60.0, -45.0, 0.5])) == (3.0, True)
    assert colour_limit(np.array([1.0, -2.0, 3.0, 0.5, -1.0, 2.0, np.nan])) == (3.0, False)
    assert colour_limit(np.array([np.nan])) == (1.0, False)


def test_every_registered_method_has_a_display_name():

    from transferbench.report.palette import METHOD_ORDER, display_names
    from transferbench.shipped import load_shipped

    rows, _, _ = load_shipped("checkpoints", "table")
    registered = {row["method"] for row in rows} | set(METHOD_ORDER)
    assert registered <= set(display_names()), registered - set(display_names())
    assert len(set(display_names().values())) == len(display_names())  # no two methods shown alike
