"""Linear probes on cached features.

SGD heads follow the paper (transfer_protocol.md §3): a fresh ``nn.Linear`` per seed, SGD(lr 0.01, momentum
0.9, weight decay 5e-4 on weight and bias), batch 64, 150 epochs, LR × 0.1 after epochs 50 and 100.
All seeds are trained in one batched pass: their parameters are stacked and SGD is element-wise, so each
seed's slice follows exactly the update it would get alone, while the features are read once.

``--solver lbfgs`` is the protocol of Kornblith et al.: L2-regularised multinomial logistic regression, its
inverse regularisation strength C chosen on a held-out part of the training set, then refit on all of it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import TransferbenchError
from ..metrics import accuracy_metrics
from ..progress import progress
from ..runspec import HParams
from .schedule import lr_at_epoch, should_evaluate

log = logging.getLogger("transferbench")


@dataclass
class HeadResult:
    seed: int
    test_logits: np.ndarray  # [N_test, C] of the final head
    top1: float
    mean_per_class_acc: float
    curve: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    validation_logits: np.ndarray | None = None  # [N_validation, C] of the final head, when a validation split exists


class _StackedSGD:
    """torch.optim.SGD's update (momentum, dampening 0, weight decay added to the gradient, no Nesterov),
    applied in place to stacked per-seed tensors. Element-wise, so every seed's slice evolves alone."""

    def __init__(self, params: list[torch.Tensor], momentum: float, weight_decay: float):
        self.params, self.momentum, self.weight_decay = params, momentum, weight_decay
        self.buffers: list[torch.Tensor] | None = None

    def step(self, grads: list[torch.Tensor], lr: float) -> None:
        if self.weight_decay:
            torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        if self.momentum:
            if self.buffers is None:  # torch initialises the buffer with the first gradient
                self.buffers = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
            grads = self.buffers
        torch._foreach_add_(self.params, grads, alpha=-lr)


def _init_head(seed: int, dim: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    head = nn.Linear(dim, num_classes)  # PyTorch default init, as the paper's fresh head
    return head.weight.detach().clone(), head.bias.detach().clone()


@torch.no_grad()
def _batched_metrics(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     num_classes: int) -> tuple[torch.Tensor, list[dict[str, float]]]:
    logits = torch.baddbmm(bias.unsqueeze(1), x.unsqueeze(0).expand(weight.shape[0], -1, -1),
                           weight.transpose(1, 2))
    y_np = y.cpu().numpy()
    metrics = [accuracy_metrics(lg.cpu().numpy(), y_np, num_classes) for lg in logits]
    return logits, metrics


def train_sgd_heads(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    seeds: list[int],
    hp: HParams,
    device: torch.device | str = "cpu",
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[HeadResult]:
    """One SGD head per seed on the same features, trained together (the paper's protocol); ``validation``
    (features, labels) held out of the training images: the final heads' accuracy on it is in each result's
    ``extra`` (``validation_top1``, ``validation_mean_per_class_acc``) and its logits in ``validation_logits``.
    Multi-label tasks (``train_y`` [N, K] of 0/1) train K sigmoid outputs with binary cross-entropy."""
    device = torch.device(device)
    train_x, train_y = train_x.to(device).float(), train_y.to(device)
    test_x, test_y = test_x.to(device).float(), test_y.to(device)
    n, dim = train_x.shape
    s = len(seeds)
    inits = [_init_head(seed, dim, num_classes) for seed in seeds]
    # [S, C, D], nn.Linear's layout: measured 2-5x faster than [S, D, C] for the small-C products here.
    weight = torch.stack([w for w, _ in inits]).to(device)
    bias = torch.stack([b for _, b in inits]).to(device)  # [S, C]
    sgd = _StackedSGD([weight, bias], hp.momentum, hp.weight_decay)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    curves: list[list[dict]] = [[] for _ in seeds]

    with flushed_denormals(device):  # subnormal softmax tails cost ~100x on CPUs (flushed_denormals)
        epochs = progress(range(hp.epochs), desc=f"linear heads x{s}", unit="epoch")
        for epoch in epochs:
            lr = lr_at_epoch(hp, epoch)
            order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)  # [S, N]
            train_loss = _sgd_epoch(weight, bias, sgd, train_x, train_y, order, hp.batch_size, lr).cpu()
            if not torch.isfinite(train_loss).all():
                bad = [seeds[i] for i in range(s) if not torch.isfinite(train_loss[i])]
                raise TransferbenchError(
                    f"linear head loss became NaN/inf at epoch {epoch} (seeds {bad}, lr={lr:g}); "
                    "lower --lr or check the features for NaNs"
                )
            test_metrics = None
            if should_evaluate(hp, epoch):
                _, test_metrics = _batched_metrics(weight, bias, test_x, test_y, num_classes)
            for i in range(s):
                point = {"epoch": epoch, "lr": lr, "train_loss": float(train_loss[i])}
                if test_metrics is not None:
                    point.update(test_metrics[i])
                curves[i].append(point)
            if test_metrics is not None:
                log.info("linear epoch %d/%d lr=%g loss=%s top1=%s", epoch + 1, hp.epochs, lr,
                         " ".join(f"{v:.4f}" for v in train_loss.tolist()),
                         " ".join(f"{m['top1']:.4f}" for m in test_metrics))

        logits, final = _batched_metrics(weight, bias, test_x, test_y, num_classes)
    results = [_head_result(seed, logits[i], final[i], curves[i]) for i, seed in enumerate(seeds)]
    if validation is not None:
        held_out_logits, held_out = _batched_metrics(weight, bias, validation[0].to(device).float(),
                                                     validation[1].to(device), num_classes)
        for result, lg, metrics in zip(results, held_out_logits, held_out, strict=True):
            result.validation_logits = lg.cpu().numpy()
            result.extra.update({f"validation_{name}": value for name, value in metrics.items()})
    return results


@contextlib.contextmanager
def flushed_denormals(device: torch.device) -> Iterator[bool]:
    """On a CPU, subnormal floats flushed to zero while the heads train (yields whether they are). A saturated
    softmax's tiny probabilities are subnormal, and x86 cores compute on them far slower: at 2048-D features with
    61% probe accuracy, the paper's 150 epochs took 191 s instead of 26 s (benchmarks/bench_estimators.py).
    Values below 1.2e-38 added to weights and momenta of ordinary size change nothing; records say it
    (``config.denormals_flushed``)."""
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield False
        return
    try:
        yield True
    finally:
        torch.set_flush_denormal(False)


def _sgd_epoch(weight: torch.Tensor, bias: torch.Tensor, sgd: _StackedSGD, train_x: torch.Tensor,
               train_y: torch.Tensor, order: torch.Tensor, batch_size: int, lr: float) -> torch.Tensor:
    """One epoch of every head, each over its own minibatch order ``order`` [S, N]; the mean loss per head [S]."""
    s, (n, dim) = weight.shape[0], train_x.shape
    loss_sum = torch.zeros(s, device=train_x.device)
    steps = 0
    for start in range(0, n, batch_size):
        idx = order[:, start:start + batch_size]  # [S, B]
        xb = train_x.index_select(0, idx.flatten()).view(s, -1, dim)  # [S, B, D]
        logits = torch.baddbmm(bias.unsqueeze(1), xb, weight.transpose(1, 2))  # [S, B, C]
        loss, grad_logits = _loss_and_grad(logits, train_y[idx])
        loss_sum += loss
        grad_weight = torch.bmm(grad_logits.transpose(1, 2).contiguous(), xb)  # [S, C, D]
        sgd.step([grad_weight, grad_logits.sum(dim=1)], lr)
        steps += 1
    return loss_sum / steps


def _loss_and_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean loss per head [S] and its gradient with respect to ``logits`` [S, B, C], in closed form (no
    autograd on the hot path). Class indices [S, B]: softmax cross-entropy, d loss / d logits = (softmax - onehot)
    / B. Multi-label 0/1 targets [S, B, C]: the mean binary cross-entropy over all B x C outputs (BCEWithLogitsLoss),
    d loss / d logits = (sigmoid - y) / (B C)."""
    if targets.ndim == 3:
        targets = targets.to(logits.dtype)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=(1, 2))
        return loss, (torch.sigmoid(logits) - targets) / (logits.shape[1] * logits.shape[2])
    yb = targets.unsqueeze(2)  # [S, B, 1]
    log_probs = logits.log_softmax(dim=2)
    loss = -log_probs.gather(2, yb).squeeze(2).mean(dim=1)
    grad_logits = log_probs.exp_()
    grad_logits.scatter_add_(2, yb, torch.full_like(yb, -1, dtype=grad_logits.dtype))
    grad_logits /= logits.shape[1]
    return loss, grad_logits


def _head_result(seed: int, logits: torch.Tensor, final: dict[str, float], curve: list[dict]) -> HeadResult:
    best = max((p for p in curve if "top1" in p), key=lambda p: p["top1"])
    return HeadResult(seed=seed, test_logits=logits.cpu().numpy(), top1=final["top1"],
                      mean_per_class_acc=final["mean_per_class_acc"], curve=curve,
                      extra={"best_epoch": best["epoch"], "best_top1": best["top1"]})


def train_lbfgs_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    seed: int,
    hp: HParams,
) -> HeadResult:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    x, y = train_x.double().numpy(), train_y.numpy()
    counts = np.bincount(y)
    splitter_cls = StratifiedShuffleSplit if counts[counts > 0].min() >= 2 else ShuffleSplit
    fit_idx, val_idx = next(splitter_cls(n_splits=1, test_size=hp.lbfgs_holdout, random_state=seed).split(x, y))
    search = []
    for c in progress(sorted(hp.lbfgs_c_grid), desc="L-BFGS C search", unit="C"):
        clf = LogisticRegression(C=c, max_iter=hp.lbfgs_max_iter, random_state=seed)
        clf.fit(x[fit_idx], y[fit_idx])
        acc = float(np.mean(clf.predict(x[val_idx]) == y[val_idx]))
        search.append({"C": c, "holdout_top1": acc})
        log.info("lbfgs C=%g holdout top1=%.4f", c, acc)
    best_c = max(search, key=lambda r: (r["holdout_top1"], -r["C"]))["C"]  # ties → stronger regularisation
    clf = LogisticRegression(C=best_c, max_iter=hp.lbfgs_max_iter, random_state=seed).fit(x, y)
    scores = clf.decision_function(test_x.double().numpy())
    if scores.ndim == 1:  # binary problems return one column
        scores = np.stack([-scores, scores], axis=1)
    logits = np.full((len(test_y), num_classes), np.finfo(np.float32).min / 2, dtype=np.float64)
    logits[:, clf.classes_] = scores  # classes absent from train can never be predicted
    metrics = accuracy_metrics(logits, test_y.numpy(), num_classes)
    return HeadResult(
        seed=seed,
        test_logits=logits.astype(np.float32),
        top1=metrics["top1"],
        mean_per_class_acc=metrics["mean_per_class_acc"],
        curve=search,
        extra={"chosen_C": best_c, "n_iter": int(np.max(clf.n_iter_))},
    )
