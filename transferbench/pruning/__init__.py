"""Pruning methods that produce sparse upstream checkpoints (pruning_methods.md), as training-loop hooks."""

from .base import Pruner, reset_momentum

__all__ = ["Pruner", "reset_momentum"]
