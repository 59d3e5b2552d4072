"""Transferability estimators against independent computations: LogME against its evidence formula maximised by a
grid search, LEEP and NCE on hand-computed cases, H-score on a closed form, kNN against sklearn's classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transferbench.estimators import h_score, knn_accuracy, leep, logme, logme_evidence, nce


def _direct_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence per sample from its definition, with dense matrices (no SVD, no fixed point)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    res2, m2 = float(((f @ m - y) ** 2).sum()), float(m @ m)
    return (n * math.log(beta) + d * math.log(alpha) - n * math.log(2 * math.pi) - beta * res2 - alpha * m2
            - logdet) / (2 * n)


@pytest.mark.parametrize(("n", "d"), [(40, 5), (12, 20)])  # more samples than features, and fewer
def test_logme_fixed_point_reaches_the_evidence_maximum_a_grid_search_finds(n, d):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = (f @ rng.normal(size=d) + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
    solved = logme_evidence(f, y)
    assert solved.evidence == pytest.approx(_direct_evidence(f, y, solved.alpha, solved.beta), abs=1e-9)
    grid = np.logspace(-4, 4, 161)
    best = max(_direct_evidence(f, y, a, b) for a in grid for b in grid)
    assert best <= solved.evidence + 1e-6  # no point of the grid beats the fixed point
    assert best >= solved.evidence - 1e-3  # and the grid's best lies next to it


def test_logme_ranks_separable_features_above_noise():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 30)
    noise = rng.normal(size=(120, 8))
    separable = noise + 3 * np.eye(8)[labels]
    assert logme(separable, labels) > logme(noise, labels)
    per_class = [logme_evidence(separable, (labels == c).astype(float)).evidence for c in range(4)]
    assert logme(separable, labels) == pytest.approx(np.mean(per_class), abs=1e-9)  # one basis, every class
    assert h_score(separable, labels) > h_score(noise, labels)
    assert knn_accuracy(separable, labels).accuracy > knn_accuracy(noise, labels).accuracy


# Four images, a source head over two classes, target labels [0, 0, 1, 1]:
SOURCE = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
TARGET = np.array([0, 0, 1, 1])


def test_leep_on_a_hand_computed_case():
    # P(y, z) = 1/4 [[0.9 + 0.6, 0.1 + 0.4], [0.2 + 0.5, 0.8 + 0.5]] = [[0.375, 0.125], [0.175, 0.325]]
    # P(z) = [0.55, 0.45]; P(y=0 | z) = [0.375/0.55, 0.125/0.45], P(y=1 | z) = [0.175/0.55, 0.325/0.45]
    p0 = [0.375 / 0.55, 0.125 / 0.45]
    p1 = [0.175 / 0.55, 0.325 / 0.45]
    eep = [0.9 * p0[0] + 0.1 * p0[1], 0.6 * p0[0] + 0.4 * p0[1], 0.2 * p1[0] + 0.8 * p1[1], 0.5 * p1[0] + 0.5 * p1[1]]
    assert leep(SOURCE, TARGET) == pytest.approx(np.mean(np.log(eep)), abs=1e-12)


def test_nce_on_a_hand_computed_case():
    # hard source labels z = [0, 0, 1, 0] (a tie goes to the first class): P(y, z) = [[2/4, 0], [1/4, 1/4]],
    # P(z) = [3/4, 1/4]; -H(Y|Z) = 2/4 log(2/3) + 1/4 log(1/3) + 1/4 log(1)
    expected = 0.5 * math.log(2 / 3) + 0.25 * math.log(1 / 3)
    assert nce(SOURCE, TARGET) == pytest.approx(expected, abs=1e-12)


def test_leep_and_nce_of_a_source_head_that_already_names_the_target_are_their_maxima():
    onehot = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert leep(onehot, labels) == pytest.approx(0.0, abs=1e-12)
    assert nce(onehot, labels) == pytest.approx(0.0, abs=1e-12)


def test_leep_refuses_logits():
    with pytest.raises(ValueError, match="softmax, not logits"):
        leep(np.array([[2.0, -1.0], [0.5, 0.3]]), np.array([0, 1]))


def test_h_score_closed_form():
    # one feature: class 0 at 0 and 2, class 1 at 4 and 6; the class means 1 and 5 around the mean 3 vary by 4,
    # the feature by (9 + 1 + 1 + 9) / 4 = 5: H = 4 / 5
    assert h_score(np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 0, 1, 1])) == pytest.approx(0.8)


def test_h_score_with_shrinkage_matches_the_plain_one_on_many_samples_and_stays_finite_on_few():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(5), 400)
    f = rng.normal(size=(2000, 4)) + np.eye(5)[labels][:, :4]
    assert h_score(f, labels, shrinkage=True) == pytest.approx(h_score(f, labels), rel=0.02)
    few, few_labels = rng.normal(size=(10, 50)), np.repeat(np.arange(2), 5)
    assert math.isfinite(h_score(few, few_labels, shrinkage=True))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_accuracy_equals_sklearns_leave_one_out_classifier(metric):
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(2), 30)
    f = rng.normal(size=(60, 6)) + 1.2 * np.eye(6)[labels]
    ours = knn_accuracy(f, labels, k=5, metric=metric)  # odd k, two classes: no ties
    theirs = cross_val_predict(KNeighborsClassifier(5, metric=metric), f, labels, cv=LeaveOneOut())
    assert (ours.k, ours.metric) == (5, metric)
    assert ours.accuracy == pytest.approx(float((theirs == labels).mean()))
    assert 0.5 < ours.accuracy < 1.0  # neither trivial nor perfect: the comparison can fail


@pytest.mark.parametrize(("n", "d"), [(300, 20), (10, 50)])  # a full-rank covariance, and a singular one
def test_h_score_equals_the_trace_formula_with_a_pseudo_inverse(n, d):
    rng = np.random.default_rng(5)
    f, labels = rng.normal(size=(n, d)), np.arange(n) % 4
    centred = f - f.mean(axis=0)
    class_means = np.stack([centred[labels == c].mean(axis=0) for c in range(4)])[labels]
    direct = np.trace(np.linalg.pinv(centred.T @ centred / n) @ (class_means.T @ class_means / n))
    assert h_score(f, labels) == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize(("n", "d"), [(200, 30), (12, 40)])
def test_ledoit_wolf_shrinkage_equals_sklearns(n, d):
    from sklearn.covariance import LedoitWolf

    from transferbench.estimators import ledoit_wolf_shrinkage

    rng = np.random.default_rng(7)
    f = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    centred = f - f.mean(axis=0)
    amount, mu = ledoit_wolf_shrinkage(centred, centred.T @ centred / n)
    fitted = LedoitWolf().fit(f)
    assert amount == pytest.approx(fitted.shrinkage_, rel=1e-9)
    shrunk = (1 - amount) * centred.T @ centred / n + amount * mu * np.eye(d)
    np.testing.assert_allclose(shrunk, fitted.covariance_, rtol=1e-9, atol=1e-12)


def test_h_score_with_shrinkage_equals_the_trace_formula_with_sklearns_ledoit_wolf_covariance():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(8)
    f, labels = rng.normal(size=(40, 60)), np.arange(40) % 3
    centred = f - f.mean(axis=0)
    class_means = np.stack([centred[labels == c].mean(axis=0) for c in range(3)])[labels]
    direct = np.trace(np.linalg.inv(LedoitWolf().fit(f).covariance_) @ (class_means.T @ class_means / 40))
    assert h_score(f, labels, shrinkage=True) == pytest.approx(direct, rel=1e-8)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_accuracy_breaks_vote_ties_to_the_lowest_label_as_sklearn_does(metric):
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(9)
    labels = np.arange(80) % 4
    f = rng.normal(size=(80, 5)) + 0.8 * np.eye(5)[labels]
    ours = knn_accuracy(f, labels, k=4, metric=metric, block=7)  # 4 votes over 4 classes: ties; several blocks
    theirs = cross_val_predict(KNeighborsClassifier(4, metric=metric), f, labels, cv=LeaveOneOut())
    assert ours.accuracy == pytest.approx(float((theirs == labels).mean()))


def test_logme_from_the_gram_matrix_equals_logme_from_the_thin_svd():
    # more samples than features: LogME's basis comes from the d x d Gram matrix by a tridiagonal reduction whose
    # eigenvectors are applied to the class sums only; the thin SVD of the features is the independent reference
    from transferbench.estimators import _maximise

    rng = np.random.default_rng(10)
    labels = np.arange(400) % 5
    f = np.maximum(rng.normal(size=(400, 60)) + 2 * rng.normal(size=(5, 60))[labels], 0) + 3.0  # ReLU'd, offset
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    onehot = np.eye(5)[labels]
    x = u.T @ onehot
    direct = np.mean([_maximise(f.shape, s, x[:, c], float(onehot[:, c].sum())).evidence for c in range(5)])
    assert logme(f, labels) == pytest.approx(direct, abs=1e-9)


def test_eigh_applied_equals_the_eigendecomposition_applied():
    from transferbench.estimators import _eigh_applied

    rng = np.random.default_rng(11)
    a = rng.normal(size=(300, 50))
    a = a.T @ a
    b = rng.normal(size=(50, 3))
    eigenvalues, rotated = _eigh_applied(a, b)
    reference_values, vectors = np.linalg.eigh(a)
    np.testing.assert_allclose(eigenvalues, reference_values, rtol=1e-12)
    # eigenvectors are defined up to their sign: compare |V^T b| column by column, and its squares sum to |b|^2
    np.testing.assert_allclose(np.abs(rotated), np.abs(vectors.T @ b), rtol=1e-9, atol=1e-12)


def _pinv_h_score(f: np.ndarray, labels: np.ndarray) -> float:
    n = len(f)
    centred = f - f.mean(axis=0)
    class_means = np.stack([centred[labels == c].mean(axis=0) for c in np.unique(labels)])[np.unique(
        labels, return_inverse=True)[1]]
    return float(np.trace(np.linalg.pinv(centred.T @ centred / n) @ (class_means.T @ class_means / n)))


@pytest.mark.parametrize("case", ["full rank, offset", "duplicated feature", "constant feature"])
def test_h_score_by_cholesky_or_its_fallback_equals_the_pinv_trace_formula(case):
    from transferbench.estimators import _cholesky_trace

    rng = np.random.default_rng(12)
    labels = np.arange(500) % 6
    f = rng.normal(size=(500, 25)) + 0.7 * rng.normal(size=(6, 25))[labels] + 40.0  # a mean far from 0
    if case == "duplicated feature":
        f[:, 3] = f[:, 7]  # n > d, yet the covariance is singular: Cholesky must give way to pinv's definition
    elif case == "constant feature":
        f[:, 0] = 5.0
    centred = f - f.mean(axis=0)
    means = np.stack([centred[labels == c].mean(axis=0) for c in range(6)])
    cholesky = _cholesky_trace(centred.T @ centred / 500, means, np.full(6, 1 / 6))
    assert (cholesky is not None) == (case == "full rank, offset")  # which path each case takes
    assert h_score(f, labels) == pytest.approx(_pinv_h_score(f, labels), rel=1e-9)


def test_h_score_with_shrinkage_on_many_samples_equals_the_trace_formula_with_sklearns_covariance():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(13)
    labels = np.arange(300) % 4
    f = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)) + rng.normal(size=(4, 20))[labels]
    centred = f - f.mean(axis=0)
    class_means = np.stack([centred[labels == c].mean(axis=0) for c in range(4)])[labels]
    direct = np.trace(np.linalg.inv(LedoitWolf().fit(f).covariance_) @ (class_means.T @ class_means / 300))
    assert h_score(f, labels, shrinkage=True) == pytest.approx(direct, rel=1e-8)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block", [3, 16, 64, 1000])  # fewer rows than k in a block, several blocks, one block
def test_leave_one_out_neighbours_equal_a_full_sort_of_all_pairs(metric, block):
    from transferbench.estimators import leave_one_out_neighbours

    rng = np.random.default_rng(14)
    f = rng.normal(size=(150, 8)) + 2.0
    if metric == "cosine":
        unit = f / np.linalg.norm(f, axis=1, keepdims=True)
        distance = -(unit @ unit.T)
    else:
        distance = ((f[:, None, :] - f[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distance, np.inf)
    expected = np.argsort(distance, axis=1, kind="stable")[:, :7]
    found = leave_one_out_neighbours(f, 7, metric, block)
    np.testing.assert_array_equal(found, expected)  # continuous features: no ties, and nearest first


def test_estimate_all_equals_each_estimator_on_its_own():
    from transferbench.estimators import estimate_all, h_scores

    rng = np.random.default_rng(15)
    labels = np.arange(240) % 3
    f = rng.normal(size=(240, 10)) + np.eye(10)[labels]
    probs = rng.dirichlet(np.ones(4), size=240)
    scores = estimate_all(f, labels, probs, k=5)
    assert scores["logme"] == logme(f, labels)
    assert scores["leep"] == leep(probs, labels) and scores["nce"] == nce(probs, labels)
    assert {k: scores[k] for k in ("h_score", "h_score_shrinkage")} == h_scores(f, labels)
    assert scores["knn_accuracy"] == knn_accuracy(f, labels, k=5).accuracy
