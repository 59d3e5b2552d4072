"""The paper's step schedule: LR × gamma after each listed 0-based epoch index (pitfall P4)."""

from __future__ import annotations

from ..runspec import HParams


def lr_at_epoch(hp: HParams, epoch: int) -> float:
    """Learning rate used *during* 0-based ``epoch``."""
    return hp.lr * hp.lr_gamma ** sum(epoch > d for d in hp.lr_decay_after)


def should_evaluate(hp: HParams, epoch: int) -> bool:
    return (epoch + 1) % hp.eval_every == 0 or epoch == hp.epochs - 1
