"""The formulas that compare one sparse run's saved test predictions with its dense partner's (numpy only):
per-class accuracy drops, churn and flips, calibration (ECE), predictive entropy and pruning-identified exemplars.
``predictions.py`` pairs the runs and reads their ``predictions.npz``; this module only computes, from logits.

Notation (shared/reference/bias_analysis.md §4.2): N test samples with labels y_i, logits z_i, p_i = softmax(z_i),
ŷ_i = argmax p_i, conf_i = max_c p_ic, c_i = 1[ŷ_i = y_i]; d = dense, s = sparse, on the same test list.

* per-class accuracy a_c = (1/n_c) Σ_{i: y_i=c} c_i; drop Δ_c = a^s_c − a^d_c (negative = the sparse model is
  worse), over classes with n_c ≥ ``min_count``;
* churn (disagreement) D = (1/N) Σ 1[ŷ^s_i ≠ ŷ^d_i]; negative flips NFR = (1/N) Σ 1[c^d_i ∧ ¬c^s_i], positive flips
  PFR = (1/N) Σ 1[¬c^d_i ∧ c^s_i] (top1^s − top1^d = PFR − NFR);
* top-label ECE with M = 15 equal-width bins over (0, 1] (bin b holds conf ∈ ((b−1)/M, b/M]):
  ECE = Σ_b (|B_b|/N) · |mean_{B_b} c − mean_{B_b} conf|;
* normalised predictive entropy H_i = −Σ_c p_ic log p_ic / log C ∈ [0, 1] (0·log 0 = 0); the shift is
  mean H^s − mean H^d;
* pruning-identified exemplars (Hooker et al. 2019): samples whose modal prediction over the sparse seeds differs
  from the modal prediction over the dense seeds (ties broken towards the smallest class index).
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
MIN_COUNT = 20


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (shifted by the row max, so large logits do not overflow)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(a_c, n_c) for c = 0..num_classes−1; a_c is NaN for classes without test samples."""
    n = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels, weights=(pred == labels).astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hits / n, np.nan), n


def per_class_drop(
    pred_sparse: np.ndarray, pred_dense: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Δ_c = a^s_c − a^d_c, a^d_c, n_c); Δ_c is NaN for classes without test samples."""
    a_s, n = per_class_accuracy(pred_sparse, labels, num_classes)
    a_d, _ = per_class_accuracy(pred_dense, labels, num_classes)
    return a_s - a_d, a_d, n


def churn(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of samples whose predicted labels differ."""
    return float(np.mean(np.asarray(pred_a) != np.asarray(pred_b)))


def flips(pred_sparse: np.ndarray, pred_dense: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(negative-flip rate, positive-flip rate) of the sparse model relative to the dense one."""
    cd, cs = pred_dense == labels, pred_sparse == labels
    return float(np.mean(cd & ~cs)), float(np.mean(~cd & cs))


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error, ``n_bins`` equal-width bins over (0, 1] (right-closed)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    gap = np.abs(
        np.bincount(bins, weights=correct, minlength=n_bins) - np.bincount(bins, weights=conf, minlength=n_bins)
    )  # = |B|·|mean c − mean conf|
    return float(gap.sum() / len(labels)) if count.sum() else float("nan")


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """H_i / log C per sample; 0 for C = 1."""
    c = probs.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=1)
    return h / np.log(c) if c > 1 else np.zeros(len(probs))


def modal_prediction(preds: np.ndarray, num_classes: int) -> np.ndarray:
    """The most frequent label per sample over the rows of ``preds`` [seeds, N]; ties → smallest label."""
    preds = np.atleast_2d(preds)
    counts = np.zeros((preds.shape[1], num_classes), dtype=np.int64)
    for row in preds:
        counts[np.arange(preds.shape[1]), row] += 1
    return counts.argmax(axis=1)


def pruning_identified_exemplars(sparse_preds: np.ndarray, dense_preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Boolean mask of the samples whose modal sparse prediction differs from the modal dense prediction."""
    return modal_prediction(sparse_preds, num_classes) != modal_prediction(dense_preds, num_classes)


def pair_metrics(
    dense_logits: np.ndarray, sparse_logits: np.ndarray, labels: np.ndarray, min_count: int = MIN_COUNT
) -> dict[str, float]:
    """Every per-pair metric (fractions, not percent): accuracy of both, churn, flips, ECE of both, mean
    normalised entropy of both and its shift, and the per-class drop summaries over classes with
    n_c ≥ ``min_count`` (all classes with samples if none reaches it)."""
    c = dense_logits.shape[1]
    pd_, ps = softmax(dense_logits), softmax(sparse_logits)
    yd, ys = pd_.argmax(axis=1), ps.argmax(axis=1)
    delta, _, n = per_class_drop(ys, yd, labels, c)
    used = n >= min_count
    if not used.any():
        used = n > 0
    d = np.sort(delta[used])
    k = max(1, int(np.ceil(0.1 * d.size)))
    nfr, pfr = flips(ys, yd, labels)
    h_d, h_s = float(normalized_entropy(pd_).mean()), float(normalized_entropy(ps).mean())
    return {
        "top1_dense": float(np.mean(yd == labels)),
        "top1_sparse": float(np.mean(ys == labels)),
        "churn": churn(ys, yd),
        "nfr": nfr,
        "pfr": pfr,
        "ece_dense": ece(pd_, labels),
        "ece_sparse": ece(ps, labels),
        "entropy_dense": h_d,
        "entropy_sparse": h_s,
        "entropy_shift": h_s - h_d,
        "worst_class_drop": float(d[0]),
        "bottom10_class_drop": float(d[:k].mean()),
        "std_class_drop": float(d.std()),
        "classes_used": int(used.sum()),
    }
