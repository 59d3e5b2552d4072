"""The bias study's metrics (transferbench.bias) on hand-computed cases: bias amplification and its skip rules, the
strict fitted threshold's K-1 count, ECE's bins, rare-value under-prediction's two branches, the equalized-odds gap,
backdoor BA at threshold 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transferbench import bias

LOGIT = 4.0  # sigmoid(4) = 0.982: a confident positive


def _ba_case():
    """40 test images: g = 1 for the first 20. The attribute is truly positive for 12 of the g=1 images and 12 of
    the g=0 images; the model predicts it for 16 g=1 images and 4 g=0 images."""
    g = np.r_[np.ones(20), np.zeros(20)].astype(bool)
    y = np.zeros(40, dtype=bool)
    y[:12], y[20:32] = True, True
    pred = np.zeros(40, dtype=bool)
    pred[:16], pred[20:24] = True, True
    return np.where(pred, LOGIT, -LOGIT)[:, None], y[:, None], g


def test_bias_amplification_by_hand():
    z, y, g = _ba_case()
    # in training the attribute co-occurs with g = 1 (0.6 vs 0.3): a* = 1
    ba = bias.bias_amplification(z, y, g, np.array([0.6]), np.array([0.3]))
    # P(g=1 | predicted) = 16/20, P(g=1 | true) = 12/24
    assert ba[0] == pytest.approx(16 / 20 - 12 / 24)
    # the stereotype g = 0 (train 0.2 vs 0.5): P(g=0 | predicted) - P(g=0 | true) = 4/20 - 12/24
    assert bias.bias_amplification(z, y, g, np.array([0.2]), np.array([0.5]))[0] == pytest.approx(4 / 20 - 12 / 24)


def test_bias_amplification_skip_rules():
    z, y, g = _ba_case()
    # rule 2: |0.33 - 0.31| / 0.31 = 0.065 < 0.1
    assert math.isnan(bias.bias_amplification(z, y, g, np.array([0.33]), np.array([0.31]))[0])
    assert not math.isnan(bias.bias_amplification(z, y, g, np.array([0.35]), np.array([0.31]))[0])  # 0.129
    # rule 1: 9 test positives in the g = 0 group
    y_few = y.copy()
    y_few[29:32] = False
    assert math.isnan(bias.bias_amplification(z, y_few, g, np.array([0.6]), np.array([0.3]))[0])
    # the identity attribute's own column is skipped
    assert math.isnan(bias.bias_amplification(z, y, g, np.array([0.6]), np.array([0.3]), skip=0)[0])


def test_fitted_threshold_is_the_kth_largest_logit_and_predicts_k_minus_one_strictly():
    z = np.array([[0.9], [0.1], [0.5], [0.7], [0.3]])
    y = np.array([[1], [0], [1], [0], [1]])  # K = 3 validation positives
    t = bias.fitted_thresholds(z, y)
    assert t[0] == 0.5  # the 3rd largest of 0.9, 0.7, 0.5, 0.3, 0.1
    assert bias.predictions(z, t).sum() == 2  # strict: K - 1
    assert bias.fitted_thresholds(z, np.zeros_like(y))[0] == math.inf


def test_ece_by_hand():
    p = np.array([0.05, 0.15, 0.15, 0.95])
    z = np.log(p / (1 - p))[:, None]
    y = np.array([0, 1, 0, 1])[:, None]
    # bins 0.0: {0.05} vs 0; 0.1: {0.15, 0.15} vs 0.5; 0.9: {0.95} vs 1
    expected = 0.25 * 0.05 + 0.5 * abs(0.15 - 0.5) + 0.25 * 0.05
    assert bias.ece(z, y)[0] == pytest.approx(expected)


def test_rare_value_underprediction_both_branches():
    y = np.array([[1, 1], [0, 1], [0, 1], [0, 0]])  # test positive rates 0.25 and 0.75
    z = np.array([[1, 1], [-1, 1], [-1, 1], [-1, 1]], dtype=float)  # predicted 0.25 and 1.0
    r = bias.rare_value_underprediction(z, y, train_positive_rate=np.array([0.2, 0.8]))
    assert r[0] == pytest.approx(0.25 / 0.25)  # rare value 1: q / pi
    assert r[1] == pytest.approx((1 - 1.0) / (1 - 0.75))  # rare value 0: (1 - q) / (1 - pi) = 0, never predicted


def test_uncertainty_band_and_equalized_odds_gap():
    p = np.array([0.05, 0.11, 0.5, 0.89, 0.95])
    assert bias.uncertainty(np.log(p / (1 - p))[:, None])[0] == pytest.approx(3 / 5)  # 0.11, 0.5, 0.89
    g = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])[:, None]
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0])[:, None]
    z = np.where(pred, LOGIT, -LOGIT)
    rates = bias.group_rates(z, y, g)
    assert (rates[1]["tpr"][0], rates[1]["fpr"][0], rates[0]["tpr"][0], rates[0]["fpr"][0]) == (1, 0.5, 0.5, 0)
    assert bias.equalized_odds_gap(z, y, g)[0] == pytest.approx(0.5)


def test_backdoor_bias_amplification_ignores_fitted_thresholds():
    z = np.array([2.0, 1.0, -1.0, 3.0, -2.0, 0.5])
    y = np.array([1, 1, 0, 1, 0, 0])
    backdoored = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    # predicted at z > 0: images 0, 1, 3, 5 -> backdoored 3 of 4; truly positive 0, 1, 3 -> backdoored 2 of 3
    assert bias.backdoor_bias_amplification(z, y, backdoored) == pytest.approx(3 / 4 - 2 / 3)


def test_interdependence_of_a_copied_prediction_is_one_and_of_an_independent_one_near_zero():
    rng = np.random.default_rng(0)
    a = rng.random(400) > 0.5
    z = np.stack([a, a, rng.random(400) > 0.5], axis=1).astype(float) * 2 - 1
    r2 = bias.interdependence(z)
    assert r2[0] == pytest.approx(1.0) and r2[1] == pytest.approx(1.0) and r2[2] < 0.02
