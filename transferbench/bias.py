"""The bias study's metrics (Iofinova, Peste & Alistarh, "Bias in Pruned Vision Models", CVPR 2023), as pure
functions of a multi-label model's outputs on CelebA-like data: logits ``z`` (N x A), binary labels ``y`` (N x A),
one identity attribute's ground truth ``g`` (N), and the decision thresholds ``t`` (A; 0 = p > 0.5).

Each follows ``shared/reference/bias_analysis.md`` §2-3, which cites the study's code line by line, with its quirks:

- ``uncertainty``: the fraction of samples with p in (0.1, 0.9), i.e. |p - 0.5| < 0.4 (metric 4);
- ``interdependence``: R^2 of an in-sample least-squares fit of each attribute's predictions on the other
  attributes' predictions (metric 5, scikit-learn's ``LinearRegression().score``);
- ``ece``: 10 equal-width bins of the positive-class probability, ``floor(10 p) / 10`` (metric 6; p = 1 is a bin
  of its own, as in the code);
- ``rare_value_underprediction``: q / pi, or (1 - q) / (1 - pi) when the training positive rate is above 0.5
  (metric 7);
- ``bias_amplification``: P(g = a* | y_hat = 1) - P(g = a* | y = 1) on the test set, a* the identity value the
  attribute co-occurs with in training, with the code's two skip rules (fewer than 10 test positives in a group; a
  relative train gap below 0.1) (§2.1);
- ``backdoor_bias_amplification``: the same with "carries the backdoor" as the group; as in the code, always at
  the threshold 0, whatever thresholds the other metrics use (§2.2);
- ``group_rates``/``equalized_odds_gap``: per-group TPR and FPR and max(|dTPR|, |dFPR|) (§2.3, not in the code);
- ``fitted_thresholds``: each attribute's K-th largest validation logit, K its validation positives; predictions
  are ``z > t`` (strict), so K - 1 validation samples are predicted positive when there are no ties (§3.1).
"""

from __future__ import annotations

import math

import numpy as np

UNCERTAIN_BAND = 0.4  # |p - 0.5| below this: the model is uncertain about the sample (metric 4, §2.4)
MIN_TEST_POSITIVES = 10  # BA skip rule 1: fewer test positives of the attribute in either group
MIN_RELATIVE_GAP = 0.1  # BA skip rule 2: |pos_frac - neg_frac| / min(pos_frac, neg_frac) below this


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def predictions(z: np.ndarray, thresholds: np.ndarray | float = 0.0) -> np.ndarray:
    """``z > t`` per attribute (strict, as the study's code)."""
    return np.asarray(z) > np.asarray(thresholds)


def accuracy(z: np.ndarray, y: np.ndarray, thresholds: np.ndarray | float = 0.0) -> np.ndarray:
    return (predictions(z, thresholds) == np.asarray(y, dtype=bool)).mean(axis=0)


def auc(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-attribute ROC-AUC of the outputs (threshold-free); NaN for an attribute with one class only."""
    from sklearn.metrics import roc_auc_score

    z, y = np.atleast_2d(np.asarray(z).T).T, np.atleast_2d(np.asarray(y).T).T
    return np.array([roc_auc_score(y[:, j], z[:, j]) if 0 < y[:, j].sum() < len(y) else math.nan
                     for j in range(y.shape[1])])


def predicted_positive_rate(z: np.ndarray, thresholds: np.ndarray | float = 0.0) -> np.ndarray:
    return predictions(z, thresholds).mean(axis=0)


def uncertainty(z: np.ndarray) -> np.ndarray:
    """U_j: the fraction of samples whose probability is within 0.4 of 0.5."""
    return (np.abs(sigmoid(z) - 0.5) < UNCERTAIN_BAND).mean(axis=0)


def interdependence(z: np.ndarray, thresholds: np.ndarray | float = 0.0) -> np.ndarray:
    """R^2_j of the in-sample least-squares fit of attribute j's predictions on the other attributes'."""
    from sklearn.linear_model import LinearRegression

    pred = predictions(z, thresholds).astype(np.float64)
    out = np.empty(pred.shape[1])
    for j in range(pred.shape[1]):
        others = np.delete(pred, j, axis=1)
        out[j] = LinearRegression().fit(others, pred[:, j]).score(others, pred[:, j])
    return out


def ece(z: np.ndarray, y: np.ndarray, bins: int = 10) -> np.ndarray:
    """ECE_j over bins floor(bins * p) / bins of the positive-class probability."""
    p, y = sigmoid(z), np.asarray(y, dtype=np.float64)
    p, y = np.atleast_2d(p.T).T, np.atleast_2d(y.T).T
    index = np.floor(bins * p).astype(int)
    out = np.zeros(p.shape[1])
    for j in range(p.shape[1]):
        for b in np.unique(index[:, j]):
            members = index[:, j] == b
            out[j] += members.mean() * abs(p[members, j].mean() - y[members, j].mean())
    return out


def rare_value_underprediction(z: np.ndarray, y: np.ndarray, train_positive_rate: np.ndarray,
                               thresholds: np.ndarray | float = 0.0) -> np.ndarray:
    """r_j: how often the rare value is predicted relative to how often it occurs (< 1: under-predicted)."""
    q = predicted_positive_rate(z, thresholds)
    pi = np.asarray(y, dtype=np.float64).mean(axis=0)
    rare_is_zero = np.asarray(train_positive_rate) > 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rare_is_zero, (1 - q) / (1 - pi), q / pi)


def cooccurrence(y_train: np.ndarray, g_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pos_frac, neg_frac): P_train(y_j = 1 | g = 1) and P_train(y_j = 1 | g = 0) per attribute."""
    y, g = np.asarray(y_train, dtype=np.float64), np.asarray(g_train, dtype=bool)
    return y[g].mean(axis=0), y[~g].mean(axis=0)


def bias_amplification(z: np.ndarray, y: np.ndarray, g: np.ndarray, pos_frac: np.ndarray, neg_frac: np.ndarray,
                       thresholds: np.ndarray | float = 0.0, skip: int | None = None) -> np.ndarray:
    """BA(j, g) per attribute (NaN where a skip rule applies, and for ``skip``, the identity attribute's own
    column)."""
    pred, y, g = predictions(z, thresholds), np.asarray(y, dtype=bool), np.asarray(g, dtype=bool)
    pred, y = np.atleast_2d(pred.T).T, np.atleast_2d(y.T).T
    pos_frac, neg_frac = np.atleast_1d(pos_frac), np.atleast_1d(neg_frac)
    out = np.full(y.shape[1], math.nan)
    for j in range(y.shape[1]):
        if j == skip or min((y[g, j]).sum(), (y[~g, j]).sum()) < MIN_TEST_POSITIVES:
            continue  # rule 1: too few test positives in a group
        low = min(pos_frac[j], neg_frac[j])
        if low == 0 or abs(pos_frac[j] - neg_frac[j]) / low < MIN_RELATIVE_GAP:
            continue  # rule 2: the train correlation is too weak (or one group never has the attribute)
        stereotype = g if pos_frac[j] > neg_frac[j] else ~g
        if not pred[:, j].any():
            continue  # no positive prediction: the first share is undefined
        out[j] = stereotype[pred[:, j]].mean() - stereotype[y[:, j]].mean()
    return out


def backdoor_bias_amplification(z: np.ndarray, y: np.ndarray, backdoored: np.ndarray) -> float:
    """P(backdoored | y_hat = 1) - P(backdoored | y = 1), the predictions always at z > 0 (the code's quirk)."""
    pred, y, bd = np.asarray(z).ravel() > 0, np.asarray(y, dtype=bool).ravel(), np.asarray(backdoored, dtype=bool)
    if not pred.any() or not y.any():
        return math.nan
    return float(bd[pred].mean() - bd[y].mean())


def group_rates(z: np.ndarray, y: np.ndarray, g: np.ndarray, thresholds: np.ndarray | float = 0.0) -> dict:
    """Per group value a in {0, 1}: accuracy, TPR and FPR per attribute (NaN where a group has no positives or
    no negatives)."""
    pred, y, g = predictions(z, thresholds), np.asarray(y, dtype=bool), np.asarray(g, dtype=bool)
    pred, y = np.atleast_2d(pred.T).T, np.atleast_2d(y.T).T
    rates = {}
    for value, members in ((1, g), (0, ~g)):
        p, t = pred[members], y[members]
        with np.errstate(invalid="ignore", divide="ignore"):
            rates[value] = {"accuracy": (p == t).mean(axis=0),
                            "tpr": (p & t).sum(axis=0) / t.sum(axis=0),
                            "fpr": (p & ~t).sum(axis=0) / (~t).sum(axis=0)}
    return rates


def equalized_odds_gap(z: np.ndarray, y: np.ndarray, g: np.ndarray,
                       thresholds: np.ndarray | float = 0.0) -> np.ndarray:
    """max(|TPR_{g=1} - TPR_{g=0}|, |FPR_{g=1} - FPR_{g=0}|) per attribute."""
    r = group_rates(z, y, g, thresholds)
    return np.maximum(np.abs(r[1]["tpr"] - r[0]["tpr"]), np.abs(r[1]["fpr"] - r[0]["fpr"]))


def fitted_thresholds(z_validation: np.ndarray, y_validation: np.ndarray) -> np.ndarray:
    """t_j = the K_j-th largest validation logit of attribute j, K_j its validation positives (inf for an
    attribute without any: never predicted positive)."""
    z, y = np.atleast_2d(np.asarray(z_validation).T).T, np.atleast_2d(np.asarray(y_validation).T).T
    out = np.full(z.shape[1], math.inf)
    for j in range(z.shape[1]):
        k = int(np.asarray(y[:, j], dtype=bool).sum())
        if k:
            out[j] = np.partition(z[:, j], -k)[-k]
    return out
