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
  are ``z > t`` (strict), so K - 1 validation samples are predicted positive when there are no ties (§3.1);
- ``train_cooccurrence_rates``/``train_positive_rate``: pos_frac, neg_frac and pi^tr from the train split's
  co-occurrence counts C = Y^T Y, which the predictions file saves instead of the train labels (§2.1);
- ``pruning_identified_exemplars``: the modal thresholded prediction over sparse seeds differs from the modal one
  over dense seeds, per sample and attribute (§2.4);
- ``flag_statistics``: the dense-only flag |p - 0.5| < 0.4 against the samples whose prediction pruning flips:
  flag rate, AUROC of the dense uncertainty 1 - 2|p - 0.5|, flips covered (§2.5, §3.2);
- ``attribute_table``: every metric above per attribute of one run (``RunOutputs``), at thresholds 0 or fitted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


def uncertain_samples(z: np.ndarray) -> np.ndarray:
    """Per sample and attribute: |p - 0.5| < 0.4, the study's "low confidence" band (metric 4; §2.4, §3.2)."""
    return np.abs(sigmoid(z) - 0.5) < UNCERTAIN_BAND


def uncertainty(z: np.ndarray) -> np.ndarray:
    """U_j: the fraction of samples whose probability is within 0.4 of 0.5."""
    return uncertain_samples(z).mean(axis=0)


def uncertainty_score(z: np.ndarray) -> np.ndarray:
    """1 - 2 |p - 0.5| per sample and attribute: 1 at p = 0.5, 0 at p in {0, 1} (a threshold-free form of the
    band of :func:`uncertain_samples`, which is ``score > 0.2``; §2.4)."""
    return 1.0 - 2.0 * np.abs(sigmoid(z) - 0.5)


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


def train_cooccurrence_rates(train_cooccurrence: np.ndarray, train_count: int,
                             identity: int) -> tuple[np.ndarray, np.ndarray]:
    """(pos_frac, neg_frac) of every attribute against the identity attribute of column ``identity``, from the
    train split's co-occurrence counts C = Y^T Y (A x A) and its size N (§2.1):
    P(y_j = 1 | g = 1) = C[j, g] / C[g, g] and P(y_j = 1 | g = 0) = (C[j, j] - C[j, g]) / (N - C[g, g]).
    The same numbers as :func:`cooccurrence` on the train labels themselves, which the predictions file does not
    hold (NaN for a group without train images)."""
    counts = np.asarray(train_cooccurrence, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos_frac = counts[:, identity] / counts[identity, identity]
        neg_frac = (np.diag(counts) - counts[:, identity]) / (train_count - counts[identity, identity])
    return pos_frac, neg_frac


def train_positive_rate(train_cooccurrence: np.ndarray, train_count: int) -> np.ndarray:
    """pi_j^tr = C[j, j] / N: each attribute's positive rate on the train split (metric 7, §2.5)."""
    return np.diag(np.asarray(train_cooccurrence, dtype=np.float64)) / train_count


def modal_prediction(seed_predictions: np.ndarray) -> np.ndarray:
    """The majority prediction over the seeds (axis 0 of a [seeds, N, A] boolean array); a tie (half the seeds)
    is 0, the smaller label, as ``report.prediction_metrics.modal_prediction`` breaks ties."""
    seed_predictions = np.asarray(seed_predictions, dtype=bool)
    return 2 * seed_predictions.sum(axis=0) > seed_predictions.shape[0]


def pruning_identified_exemplars(sparse_predictions: np.ndarray, dense_predictions: np.ndarray) -> np.ndarray:
    """PIEs per sample and attribute (§2.4, Hooker et al. 2019): the modal thresholded prediction over the sparse
    seeds ([seeds, N, A]) differs from the modal one over the dense seeds."""
    return modal_prediction(sparse_predictions) != modal_prediction(dense_predictions)


def auroc(score: np.ndarray, event: np.ndarray) -> float:
    """The area under the ROC curve of ``score`` for predicting ``event`` (Mann-Whitney U / (n1 n0), tied scores
    ranked by their mean rank); NaN when every sample, or none, has the event."""
    from scipy.stats import rankdata

    score, event = np.asarray(score, dtype=np.float64).ravel(), np.asarray(event, dtype=bool).ravel()
    positives = int(event.sum())
    negatives = event.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[event].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def flag_statistics(dense_z: np.ndarray, sparse_z: np.ndarray, dense_thresholds: np.ndarray | float = 0.0,
                    sparse_thresholds: np.ndarray | float = 0.0, pooled: bool = False) -> dict[str, np.ndarray]:
    """How well the dense model alone points at the samples that pruning changes (§2.5, §3.2), per attribute, or
    over every (sample, attribute) pair when ``pooled``:

    - ``flag_rate``: the fraction flagged, flag = dense |p - 0.5| < 0.4;
    - ``flip_rate``: the fraction whose sparse prediction differs from the dense one (each at its thresholds);
    - ``flip_auroc``: AUROC of the dense uncertainty 1 - 2 |p - 0.5| for predicting a flip;
    - ``flips_covered``: |flagged and flipped| / |flipped| (NaN without flips)."""
    flag, score = uncertain_samples(dense_z), uncertainty_score(dense_z)
    flip = predictions(sparse_z, sparse_thresholds) != predictions(dense_z, dense_thresholds)
    flag, score, flip = (np.atleast_2d(a.T).T for a in (flag, score, flip))
    if pooled:
        flag, score, flip = (a.reshape(-1, 1) for a in (flag, score, flip))
    with np.errstate(divide="ignore", invalid="ignore"):
        covered = (flag & flip).sum(axis=0) / flip.sum(axis=0)
    return {"flag_rate": flag.mean(axis=0), "flip_rate": flip.mean(axis=0),
            "flip_auroc": np.array([auroc(score[:, j], flip[:, j]) for j in range(flip.shape[1])]),
            "flips_covered": covered}


@dataclass(frozen=True)
class RunOutputs:
    """One run's saved outputs on a CelebA-like task (its ``predictions.npz``): K output columns, each one of the
    A annotated attributes (K = A for the joint 40-attribute model, K = 1 for a single-label one)."""

    logits: np.ndarray  # [N, K] test logits
    labels: np.ndarray  # [N, K] 0/1 test labels of the outputs
    classes: tuple[str, ...]  # [K] the attribute each output predicts
    attributes: np.ndarray  # [N, A] 0/1 test ground truth of every annotated attribute (the identity groups)
    attribute_names: tuple[str, ...]  # [A]
    train_cooccurrence: np.ndarray  # [A, A] Y^T Y of the train split's attribute matrix
    train_count: int  # train images
    validation_logits: np.ndarray | None = None  # [Nv, K] on the official validation split: to fit thresholds
    validation_labels: np.ndarray | None = None  # [Nv, K]
    backdoored: np.ndarray | None = None  # [N] bool, backdoor variants only (§2.2)
    ids: np.ndarray | None = None  # [N] test image ids, to check that runs saw one test list

    def output_attributes(self) -> np.ndarray:
        """The index in ``attribute_names`` of each output column's attribute (ValueError naming one that is
        missing)."""
        missing = [c for c in self.classes if c not in self.attribute_names]
        if missing:
            raise ValueError(f"outputs {', '.join(missing)} are not among attribute_names")
        return np.array([self.attribute_names.index(c) for c in self.classes], dtype=np.int64)


def ba_column(identity: str) -> str:
    """The attribute table's column of the bias amplification towards ``identity``."""
    return f"ba_{identity}"


def eo_gap_column(identity: str) -> str:
    """The attribute table's column of the equalized-odds gap between the groups of ``identity``."""
    return f"eo_gap_{identity}"


def attribute_table(run: RunOutputs, identities: Sequence[str],
                    thresholds: np.ndarray | float = 0.0) -> dict[str, np.ndarray]:
    """Every §2 metric per output attribute of one run at ``thresholds`` (0: p > 0.5; or
    :func:`fitted_thresholds` of the run's validation outputs, §3.1), as columns of K values: accuracy, auc,
    predicted/test/train positive rates, uncertainty, interdependence (NaN for a single output: nothing to
    regress on), ece, rare_value_underprediction, then per identity attribute the bias amplification (with its
    skip rules) and the equalized-odds gap, and ``backdoor_ba`` for a backdoor run (at threshold 0 whatever
    ``thresholds`` are, as the study's code). AUC, uncertainty and ECE do not depend on the thresholds."""
    z, y = np.asarray(run.logits, dtype=np.float64), np.asarray(run.labels, dtype=bool)
    width = z.shape[1]
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (width,))
    train_rate = train_positive_rate(run.train_cooccurrence, run.train_count)[run.output_attributes()]
    table = {
        "attribute": np.array(run.classes, dtype=object), "threshold": t, "accuracy": accuracy(z, y, t),
        "auc": auc(z, y), "predicted_positive_rate": predicted_positive_rate(z, t),
        "test_positive_rate": y.mean(axis=0), "train_positive_rate": train_rate, "uncertainty": uncertainty(z),
        "interdependence": interdependence(z, t) if width > 1 else np.full(width, math.nan), "ece": ece(z, y),
        "rare_value_underprediction": rare_value_underprediction(z, y, train_rate, t),
    }
    for identity in identities:
        table |= _identity_columns(run, identity, t)
    if run.backdoored is not None:
        table["backdoor_ba"] = np.array([backdoor_bias_amplification(z[:, j], y[:, j], run.backdoored)
                                         for j in range(width)])
    return table


def _identity_columns(run: RunOutputs, identity: str, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """BA towards ``identity`` (the identity's own output skipped) and the equalized-odds gap, per output."""
    group_index = run.attribute_names.index(identity)
    g = np.asarray(run.attributes[:, group_index], dtype=bool)
    columns = run.output_attributes()
    pos_frac, neg_frac = train_cooccurrence_rates(run.train_cooccurrence, run.train_count, group_index)
    own = next((j for j, a in enumerate(columns) if a == group_index), None)
    return {ba_column(identity): bias_amplification(run.logits, run.labels, g, pos_frac[columns], neg_frac[columns],
                                                    thresholds, skip=own),
            eo_gap_column(identity): equalized_odds_gap(run.logits, run.labels, g, thresholds)}
