"""Linear-probe heads against independent references (plain torch loops, sklearn)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch import nn

from transferbench.errors import TransferbenchError
from transferbench.finetune.linear import train_lbfgs_head, train_sgd_heads
from transferbench.finetune.schedule import lr_at_epoch
from transferbench.metrics import accuracy_metrics
from transferbench.runspec import HParams, resolve_hparams


def _blobs(n=120, d=16, c=4, seed=0):
    centers = torch.randn(c, d, generator=torch.Generator().manual_seed(1234)) * 2  # shared by all splits
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    x = centers[y] + torch.randn(n, d, generator=g)
    return x, y


def test_paper_schedule_steps_after_epochs_50_and_100():
    hp = HParams()
    lrs = [lr_at_epoch(hp, e) for e in range(150)]
    assert lrs[0] == lrs[50] == pytest.approx(0.01)
    assert lrs[51] == lrs[100] == pytest.approx(0.001)
    assert lrs[101] == lrs[149] == pytest.approx(0.0001)
    assert [lrs.count(v) for v in sorted(set(lrs), reverse=True)] == [51, 50, 49]


def test_shortened_runs_keep_three_lr_phases_and_full_lr_comes_from_the_task():
    hp = resolve_hparams("full", 0.01, {"epochs": 15})
    assert hp.lr_decay_after == (4, 9)  # 5/5/5 epochs, as 51/50/49 of 150 and hp.lr == 0.01
    assert resolve_hparams("linear", 0.01).lr == 0.01
    assert resolve_hparams("full", 0.001).lr == 0.001
    with pytest.raises(TransferbenchError, match="unknown hyper-parameter"):
        resolve_hparams("linear", 0.001, {"learning_rate": 1})
    with pytest.raises(TransferbenchError, match="linear only"):
        resolve_hparams("full", 0.001, {"solver": "lbfgs"})


def _reference_sgd_head(x, y, xt, seed, hp):
    """One seed, trained the plain way: nn.Linear + torch.optim.SGD over shuffled minibatches (cross-entropy, or
    BCEWithLogitsLoss's mean over every output when ``y`` holds rows of 0/1 attributes)."""
    torch.manual_seed(seed)
    multilabel = y.ndim == 2
    head = nn.Linear(x.shape[1], y.shape[1] if multilabel else int(y.max()) + 1)
    opt = torch.optim.SGD(head.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(hp.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at_epoch(hp, epoch)
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), hp.batch_size):
            idx = order[start:start + hp.batch_size]
            loss = (F.binary_cross_entropy_with_logits(head(x[idx]), y[idx].float()) if multilabel
                    else F.cross_entropy(head(x[idx]), y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return head(xt)


def test_batched_sgd_heads_equal_independent_per_seed_training():
    x, y = _blobs()
    xt, yt = _blobs(n=40, seed=1)
    hp = resolve_hparams("linear", 0.001, {"epochs": 6, "batch_size": 16, "lr": 0.05})
    seeds = [21, 51, 81]
    heads = train_sgd_heads(x, y, xt, yt, 4, seeds, hp)
    for seed, head in zip(seeds, heads, strict=True):
        ref = _reference_sgd_head(x, y, xt, seed, hp)
        np.testing.assert_allclose(head.test_logits, ref.numpy(), rtol=1e-4, atol=1e-5)
        assert head.top1 == pytest.approx(float((ref.argmax(1) == yt).float().mean()))
        assert len(head.curve) == 6 and head.curve[-1]["lr"] == pytest.approx(0.05 * 0.01)
    # different seeds → different heads
    assert not np.allclose(heads[0].test_logits, heads[1].test_logits)


def _attributes(n, seed):
    """Three 0/1 attributes per sample, each a half-space of 16-D Gaussian features (one rare: ~15% positives)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    directions = torch.randn(16, 3, generator=torch.Generator().manual_seed(99))
    y = (x @ directions > torch.tensor([0.0, 0.5, 4.0])).long()
    return x, y


def test_multilabel_heads_equal_plain_bce_training_and_keep_validation_logits():
    x, y = _attributes(160, 0)
    xt, yt = _attributes(60, 1)
    xv, yv = _attributes(30, 2)
    hp = resolve_hparams("linear", 0.001, {"epochs": 4, "batch_size": 16, "lr": 0.5})
    heads = train_sgd_heads(x, y, xt, yt, 3, [21, 51], hp, validation=(xv, yv))
    for seed, head in zip([21, 51], heads, strict=True):
        ref = _reference_sgd_head(x, y, xt, seed, hp)
        np.testing.assert_allclose(head.test_logits, ref.numpy(), rtol=1e-4, atol=1e-5)
        predicted = ref.numpy() > 0
        assert head.top1 == pytest.approx(float((predicted == yt.numpy()).mean()))
        assert head.mean_per_class_acc == pytest.approx(
            np.mean([balanced_accuracy_score(yt[:, j], predicted[:, j]) for j in range(3)]))
        assert head.validation_logits.shape == (30, 3)
        assert head.extra["validation_top1"] == pytest.approx(float(((head.validation_logits > 0) == yv.numpy())
                                                                    .mean()))
    assert heads[0].top1 > 0.8


def test_sgd_heads_learn_separable_data():
    x, y = _blobs(n=400)
    xt, yt = _blobs(n=200, seed=3)
    hp = resolve_hparams("linear", 0.001, {"epochs": 5})
    (head,) = train_sgd_heads(x, y, xt, yt, 4, [0], hp)
    assert head.top1 > 0.9


def test_nan_features_give_a_one_line_error():
    x, y = _blobs()
    x[3, 2] = float("nan")
    hp = resolve_hparams("linear", 0.001, {"epochs": 1})
    with pytest.raises(TransferbenchError, match="NaN"):
        train_sgd_heads(x, y, x, y, 4, [0], hp)


def test_lbfgs_matches_sklearn_at_the_chosen_c():
    x, y = _blobs(n=200, c=3)
    xt, yt = _blobs(n=90, c=3, seed=5)
    hp = resolve_hparams("linear", 0.001, {"solver": "lbfgs", "lbfgs_c_grid": [1e-4, 1e-2, 1.0]})
    head = train_lbfgs_head(x, y, xt, yt, 3, seed=0, hp=hp)
    chosen = head.extra["chosen_C"]
    assert chosen in (1e-4, 1e-2, 1.0) and len(head.curve) == 3
    ref = LogisticRegression(C=chosen, max_iter=1000, random_state=0).fit(x.double().numpy(), y.numpy())
    expected = ref.decision_function(xt.double().numpy())
    np.testing.assert_allclose(head.test_logits, expected, rtol=1e-4, atol=1e-4)
    assert head.top1 == pytest.approx(ref.score(xt.double().numpy(), yt.numpy()))


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=300)
    logits = rng.normal(size=(300, 7))
    logits[np.arange(300), labels] += rng.normal(1.0, 1.0, size=300)
    m = accuracy_metrics(logits, labels, 7)
    assert m["top1"] == pytest.approx(accuracy_score(labels, logits.argmax(1)))
    assert m["mean_per_class_acc"] == pytest.approx(balanced_accuracy_score(labels, logits.argmax(1)))
    # hand example: class 0 has 3 samples (2 right), class 1 has 1 (right) → mpc = (2/3 + 1)/2
    onehot = np.eye(3)[[0, 0, 1, 1]]
    assert accuracy_metrics(onehot, np.array([0, 0, 0, 1]), 3)["mean_per_class_acc"] == pytest.approx(5 / 6)
