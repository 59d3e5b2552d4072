"""Top-1 and mean per-class accuracy (pitfall P11: the paper reports both, depending on the task).

Multi-label tasks (CelebA's attributes: labels [N, K] of 0/1, one sigmoid output each) have the same two numbers
per attribute, averaged over the K attributes: "top1" is the mean attribute accuracy (a logit above 0 predicts 1)
and "mean_per_class_acc" the mean of each attribute's balanced accuracy (mean of its TPR and TNR).
"""

from __future__ import annotations

import numpy as np


def top1(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def mean_per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean over the classes present in ``labels`` of each class's accuracy (sklearn's balanced accuracy)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    correct = np.bincount(labels, weights=(predictions == labels), minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    return float(np.mean(correct[present] / counts[present]))


def accuracy_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Top-1 and mean per-class accuracy of ``logits`` [N, C]; of each attribute, averaged, when ``labels`` is a
    multi-label [N, K] 0/1 matrix."""
    if np.ndim(labels) == 2:
        return multilabel_metrics(logits, labels)
    predictions = np.asarray(logits).argmax(axis=1)
    return {
        "top1": top1(predictions, labels),
        "mean_per_class_acc": mean_per_class_accuracy(predictions, labels, num_classes),
    }


def multilabel_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean attribute accuracy and mean attribute balanced accuracy of sigmoid outputs ``logits`` [N, K] against
    0/1 ``labels`` [N, K]; an attribute with one value only in ``labels`` counts that value's accuracy."""
    predicted, labels = np.asarray(logits) > 0, np.asarray(labels).astype(bool)
    correct = predicted == labels
    balanced = [np.mean([correct[labels[:, j] == v, j].mean() for v in (False, True) if (labels[:, j] == v).any()])
                for j in range(labels.shape[1])]
    return {"top1": float(correct.mean()), "mean_per_class_acc": float(np.mean(balanced))}
