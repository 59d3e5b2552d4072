"""compare: the noise test when a side has a single seed, against closed forms of the t distribution."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from transferbench.errors import TransferbenchError
from transferbench.report.collect import runs_frame
from transferbench.report.compare import compare, noise_test, prediction_test


def _t_cdf_df1(t: float) -> float:  # Cauchy
    return 0.5 + math.atan(t) / math.pi


def _t_cdf_df2(t: float) -> float:
    return 0.5 + t / (2.0 * math.sqrt(2.0 + t * t))


def _runs(values: dict[str, list[float]], source: str) -> pd.DataFrame:
    rows = [{"run_key": f"{source}-{task}-{seed}", "task": task, "method": "acdc", "arch": "mobilenet",
             "mode": "full", "seed": seed, "target_sparsity": 0.9, "primary": v, "top1": v, "solver": "sgd"}
            for task, vs in values.items() for seed, v in enumerate(vs)]
    return runs_frame(rows, source=source)


def test_prediction_test_by_hand():
    # paper: 3 seeds 70, 71, 72 (mean 71, std 1); ours: one seed at 74
    se, t, df, p = prediction_test(74.0, 71.0, 1.0, 3)
    assert se == pytest.approx(math.sqrt(1 + 1 / 3)) and df == 2
    t_hand = 3.0 / math.sqrt(4 / 3)
    assert t == pytest.approx(t_hand) and p == pytest.approx(2 * (1 - _t_cdf_df2(t_hand)))
    # 2 seeds (df = 1): 70 and 72, mean 71, std sqrt(2); ours 71.5
    se, t, df, p = prediction_test(71.5, 71.0, math.sqrt(2.0), 2)
    t_hand = 0.5 / (math.sqrt(2.0) * math.sqrt(1.5))
    assert df == 1 and p == pytest.approx(2 * (1 - _t_cdf_df1(t_hand)))
    # the verdict boundary is the (1 − alpha) prediction interval: with df = 2, t_0.975 = 4.302652729...
    quantile = 4.302652729749464
    assert 2 * (1 - _t_cdf_df2(quantile)) == pytest.approx(0.05)
    inside = 71.0 + 0.999 * quantile * math.sqrt(4 / 3)
    outside = 71.0 + 1.001 * quantile * math.sqrt(4 / 3)
    assert prediction_test(inside, 71.0, 1.0, 3)[3] > 0.05 > prediction_test(outside, 71.0, 1.0, 3)[3]


def test_noise_test_picks_the_test_by_seed_counts():
    assert noise_test(74.0, math.nan, 1, 71.0, 1.0, 3)[0] == "prediction"
    test, _, t, _, p = noise_test(71.0, 1.0, 3, 74.0, math.nan, 1)  # the single seed on the paper's side
    assert test == "prediction" and t < 0 and p == pytest.approx(prediction_test(74.0, 71.0, 1.0, 3)[3])
    assert noise_test(71.0, 1.0, 3, 72.0, 1.0, 4)[0] == "welch"
    test, *rest = noise_test(71.0, math.nan, 1, 72.0, math.nan, 1)
    assert test == "n/a" and all(math.isnan(x) for x in rest)


def test_compare_single_seed_cells():
    ours = _runs({"dtd": [0.74], "pets": [0.90], "cars": [0.80, 0.81, 0.80]}, "ours")
    paper = _runs({"dtd": [0.70, 0.71, 0.72], "pets": [0.50], "cars": [0.85]}, "paper")
    table = compare(pd.concat([ours, paper], ignore_index=True)).set_index("task")
    assert table.loc["dtd", "test"] == "prediction"
    assert table.loc["dtd", "p"] == pytest.approx(2 * (1 - _t_cdf_df2(3.0 / math.sqrt(4 / 3))))
    assert table.loc["dtd", "verdict"] == "within"  # 3 pp off, but 3 seeds say little about the spread
    assert table.loc["pets", "test"] == "n/a" and table.loc["pets", "verdict"] == "n/a"
    # ours 80, 81, 80 (mean 80 1/3, std 1/sqrt(3)) against the paper's single 85: t = 7 on 2 degrees of freedom
    assert table.loc["cars", "test"] == "prediction" and table.loc["cars", "t"] == pytest.approx(-7.0)
    assert table.loc["cars", "p"] == pytest.approx(2 * (1 - _t_cdf_df2(7.0)))
    assert table.loc["cars", "verdict"] == "outside"


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 5.0, math.nan])
def test_alpha_must_lie_in_0_1(alpha):
    runs = pd.concat([_runs({"dtd": [0.7, 0.71]}, "ours"), _runs({"dtd": [0.7, 0.72]}, "paper")])
    with pytest.raises(TransferbenchError, match=r"--alpha .*strictly between 0 and 1"):
        compare(runs, alpha=alpha)
