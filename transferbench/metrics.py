"""Top-1 and mean per-class accuracy (pitfall P11: the paper reports both, depending on the task)."""

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
    predictions = np.asarray(logits).argmax(axis=1)
    return {
        "top1": top1(predictions, labels),
        "mean_per_class_acc": mean_per_class_accuracy(predictions, labels, num_classes),
    }
