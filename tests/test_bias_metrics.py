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


def test_train_rates_from_cooccurrence_counts_match_the_train_labels():
    rng = np.random.default_rng(1)
    y_train = (rng.random((300, 5)) < [0.5, 0.2, 0.7, 0.4, 0.1]).astype(np.int64)
    counts = y_train.T @ y_train
    pos_frac, neg_frac = bias.train_cooccurrence_rates(counts, len(y_train), identity=0)
    g = y_train[:, 0].astype(bool)
    assert pos_frac == pytest.approx(y_train[g].mean(axis=0)) and neg_frac == pytest.approx(y_train[~g].mean(axis=0))
    assert bias.train_positive_rate(counts, len(y_train)) == pytest.approx(y_train.mean(axis=0))


def test_pies_are_samples_whose_modal_sparse_prediction_differs_from_the_modal_dense_one():
    # 3 sparse seeds, 2 dense seeds, 3 samples, 2 attributes; a tie over the dense seeds is 0
    sparse = np.array([[[1, 0], [1, 1], [0, 0]],
                       [[1, 0], [0, 1], [1, 0]],
                       [[0, 0], [0, 0], [1, 1]]], dtype=bool)
    dense = np.array([[[0, 0], [1, 0], [1, 1]],
                      [[0, 1], [0, 0], [1, 0]]], dtype=bool)
    # sparse majority: [1,0] [0,1] [1,0]; dense majority: [0,0] [0,0] (ties) [1,0]
    expected = np.array([[True, False], [False, True], [False, False]])
    assert (bias.pruning_identified_exemplars(sparse, dense) == expected).all()
    assert not bias.modal_prediction(np.array([[True], [False]])).any()  # 1 of 2 seeds: a tie, 0


def _flag_case():
    """Dense p = 0.05, 0.3, 0.6, 0.97, 0.85: flagged (|p - 0.5| < 0.4) are samples 1, 2, 4; dense predicts 0, 0, 1, 1,
    1; the sparse model predicts 1, 1, 0, 1, 1: flips at 0, 1, 2."""
    p = np.array([0.05, 0.3, 0.6, 0.97, 0.85])
    dense = np.log(p / (1 - p))[:, None]
    sparse = np.where(np.array([1, 1, 0, 1, 1], dtype=bool), LOGIT, -LOGIT)[:, None]
    return dense, sparse


def test_flag_statistics_by_hand_and_auroc_against_sklearn():
    from sklearn.metrics import roc_auc_score

    dense, sparse = _flag_case()
    stats = bias.flag_statistics(dense, sparse)
    assert stats["flag_rate"][0] == pytest.approx(3 / 5) and stats["flip_rate"][0] == pytest.approx(3 / 5)
    assert stats["flips_covered"][0] == pytest.approx(2 / 3)  # the flip at sample 0 (p = 0.05) is not flagged
    # scores 1 - 2|p - 0.5| = 0.1, 0.6, 0.8 (flipped) vs 0.06, 0.3: the flipped score ranks higher in 5 of 6 pairs
    assert stats["flip_auroc"][0] == pytest.approx(5 / 6)
    rng = np.random.default_rng(2)
    score, event = rng.normal(size=200).round(1), rng.random(200) < 0.3  # rounded: many ties
    assert bias.auroc(score, event) == pytest.approx(roc_auc_score(event, score))
    assert math.isnan(bias.auroc(score, np.zeros(200, dtype=bool)))


def test_flag_statistics_use_each_side_s_thresholds_and_pool_over_attributes():
    dense, sparse = _flag_case()
    # a sparse threshold above every sparse logit: the sparse model predicts 0 everywhere, flips at 2, 3, 4
    assert bias.flag_statistics(dense, sparse, sparse_thresholds=LOGIT + 1)["flip_rate"][0] == pytest.approx(3 / 5)
    two_dense, two_sparse = np.hstack([dense, -dense]), np.hstack([sparse, sparse])
    pooled = bias.flag_statistics(two_dense, two_sparse, pooled=True)
    flat = bias.flag_statistics(np.vstack([dense, -dense]), np.vstack([sparse, sparse]))
    for key in ("flag_rate", "flip_rate", "flip_auroc", "flips_covered"):
        assert pooled[key][0] == pytest.approx(flat[key][0])


def _table_run(backdoored=None) -> bias.RunOutputs:
    """_ba_case's attribute (Smiling) and its identity (Male) as a run with two outputs, Smiling and Male; in
    training 6 of 10 men and 3 of 10 women smile (pos_frac 0.6, neg_frac 0.3, as in the hand case above)."""
    z, y, g = _ba_case()
    male = np.where(g, LOGIT, -LOGIT)[:, None]
    train = np.zeros((20, 2), dtype=np.int64)
    train[:10, 1] = 1  # Male
    train[:6, 0], train[10:13, 0] = 1, 1  # Smiling
    return bias.RunOutputs(logits=np.hstack([z, male]), labels=np.hstack([y, g[:, None]]).astype(np.int64),
                           classes=("Smiling", "Male"), attributes=np.hstack([y, g[:, None]]).astype(np.int8),
                           attribute_names=("Smiling", "Male"), train_cooccurrence=train.T @ train, train_count=20,
                           backdoored=backdoored)


def test_attribute_table_by_hand():
    table = bias.attribute_table(_table_run(), ["Male"])
    assert list(table["attribute"]) == ["Smiling", "Male"]
    assert table["ba_Male"][0] == pytest.approx(16 / 20 - 12 / 24) and math.isnan(table["ba_Male"][1])  # own column
    assert table["accuracy"][0] == pytest.approx((40 - 4 - 8) / 40)  # 4 false positives (g=1), 8 misses (g=0)
    assert table["predicted_positive_rate"][0] == pytest.approx(20 / 40)
    assert table["train_positive_rate"] == pytest.approx([9 / 20, 10 / 20])
    assert table["rare_value_underprediction"][0] == pytest.approx((20 / 40) / (24 / 40))  # rare value 1: q / pi
    # Smiling TPR: 12/12 (g=1) vs 4/12 (g=0); FPR: 4/8 vs 0/8
    assert table["eo_gap_Male"][0] == pytest.approx(max(1 - 4 / 12, 4 / 8))


def test_attribute_table_at_fitted_thresholds_keeps_backdoor_ba_at_zero():
    backdoored = np.arange(40) % 2 == 0
    run = _table_run(backdoored)
    at_zero = bias.attribute_table(run, ["Male"])
    raised = bias.attribute_table(run, ["Male"], thresholds=np.array([LOGIT + 1, 0.0]))  # Smiling never predicted
    assert raised["predicted_positive_rate"][0] == 0 and math.isnan(raised["ba_Male"][0])
    expected = bias.backdoor_bias_amplification(run.logits[:, 0], run.labels[:, 0], backdoored)
    assert raised["backdoor_ba"][0] == at_zero["backdoor_ba"][0] == pytest.approx(expected)
    single = bias.RunOutputs(**{**run.__dict__, "logits": run.logits[:, :1], "labels": run.labels[:, :1],
                                "classes": ("Smiling",)})
    assert math.isnan(bias.attribute_table(single, ["Male"])["interdependence"][0])  # nothing to regress on
