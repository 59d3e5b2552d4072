"""Transferability estimators: scores that rank checkpoints for a task from their features alone, without training.

Each is a pure function of the training split's penultimate features (``n x d``), its labels (``n`` integers in
``0..C-1``) and, for LEEP and NCE, the upstream head's outputs on the same images (``n x Z`` probabilities). They are
computed on the train split, as LogME's authors advise (thuml/LogME#15). Their absolute values mean little; only the
ranking of checkpoints for one task does (thuml/LogME#11).

- ``logme``: the log marginal evidence of a Bayesian linear model per class (one-hot target), maximised over the
  prior and noise precisions by fixed-point iterations, per sample, averaged over classes (You et al., ICML 2021).
- ``leep``: the log expected empirical prediction of the source head through the empirical P(y | z) (Nguyen et al.,
  ICML 2020).
- ``nce``: the negative conditional entropy H(Y | Z) of the target labels given the source head's hard labels
  (Tran et al., ICCV 2019).
- ``h_score``: tr(cov(f)^-1 cov(E[f | y])) (Bao et al., ICIP 2019); ``shrinkage=True`` uses the Ledoit-Wolf
  covariance, the regularised variant of Ibrahim et al. ("Newer is not always better", 2022), which stays finite
  when d is near n.
- ``knn_accuracy``: leave-one-out k-nearest-neighbour accuracy on the features (k and metric stated in the result).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ESTIMATORS = ("logme", "leep", "nce", "h_score", "h_score_shrinkage", "knn_accuracy")
KNN_K, KNN_METRIC = 20, "cosine"
LOGME_MAX_ITERATIONS = 100
LOGME_TOLERANCE = 1e-3  # relative change of alpha and beta at which the iterations stop (tested: the maximum)


@dataclass(frozen=True)
class Evidence:
    """One class's LogME solution: the evidence per sample and the precisions it was reached at."""

    evidence: float
    alpha: float
    beta: float
    iterations: int


def _as_inputs(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or y.ndim != 1 or len(f) != len(y) or len(y) < 2:
        raise ValueError(f"features must be n x d and labels n (n >= 2), got {f.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError("labels must be non-negative integers")
    if not np.isfinite(f).all():
        raise ValueError("features hold NaN or inf")
    return f, y.astype(np.int64)


def logme_evidence(features: np.ndarray, target: np.ndarray) -> Evidence:
    """The maximised log evidence per sample of ``target = features @ w + noise``, ``w ~ N(0, I/alpha)``,
    ``noise ~ N(0, 1/beta)``: (n/2 log beta + d/2 log alpha - n/2 log 2 pi - beta/2 |Fm - y|^2 - alpha/2 |m|^2
    - 1/2 log det(alpha I + beta F^T F)) / n, with m the posterior mean."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    n, d = f.shape
    if n <= d:
        s, x = _thin_svd_basis(f, y[:, None])
    else:
        s, x = _gram_basis(_scatter(f).gram, f.T @ y[:, None])
    return _maximise(f.shape, s, x[:, 0], float(y @ y))


@dataclass(frozen=True)
class _Scatter:
    """One pass over the features (float64, in row chunks): their mean, the scatter sum_i (x_i - mean)(x_i - mean)^T
    (a d x d syrk per chunk: the covariance without cancellation) and sum_i |x_i - mean|^4 (Ledoit-Wolf's)."""

    n: int
    mean: np.ndarray
    scatter: np.ndarray
    fourth: float

    @property
    def gram(self) -> np.ndarray:
        """F^T F = scatter + n mean mean^T (a sum of two positive semi-definite terms: no cancellation)."""
        return self.scatter + self.n * np.outer(self.mean, self.mean)


def _scatter(f: np.ndarray, chunk: int = 16384) -> _Scatter:
    n, d = f.shape
    mean = f.mean(axis=0)
    scatter, fourth = np.zeros((d, d)), 0.0
    for start in range(0, n, chunk):
        centred = f[start:start + chunk] - mean
        scatter += centred.T @ centred  # numpy calls BLAS syrk for a.T @ a: half the products of a general GEMM
        fourth += float((np.einsum("ij,ij->i", centred, centred) ** 2).sum())
    return _Scatter(n, mean, scatter, fourth)


def _thin_svd_basis(f: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero singular values ``s`` of ``f`` (no more samples than features) and ``U^T targets``."""
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-12
    return s[keep], u[:, keep].T @ targets


def _gram_basis(gram: np.ndarray, projections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero singular values ``s`` of ``F`` and ``U^T targets`` (its left singular basis) from the d x d
    Gram matrix ``F^T F`` and ``projections = F^T targets``: ``U^T targets = V^T F^T targets / s`` with ``V`` the
    Gram matrix's eigenvectors (n d^2 + d^3, about 5x faster than the thin SVD at 10,000 x 2048)."""
    sigma, rotated = _eigh_applied(gram, projections)
    keep = sigma > sigma.max(initial=0.0) * 1e-12  # directions the features do not span: not in the basis
    s = np.sqrt(sigma[keep])
    return s, rotated[keep] / s[:, None]


def _eigh_applied(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eigenvalues of the symmetric ``a`` (ascending) and ``V^T b`` for its eigenvectors ``V``, without forming
    ``V``: LAPACK's symmetric eigensolver (dsyevd: tridiagonal reduction ``a = Q T Q^T``, divide and conquer on
    ``T = W diag W^T``, then ``V = Q W``, a d x d x d product) with the last product applied to the few columns of
    ``b`` instead: ``V^T b = W^T (Q^T b)``. Half the time of ``numpy.linalg.eigh`` at d = 2048."""
    from scipy.linalg import eigh_tridiagonal, lapack

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = len(a)
    if d < 3:  # no reflectors to apply
        eigenvalues, vectors = np.linalg.eigh(a)
        return eigenvalues, vectors.T @ b
    lwork = int(lapack.dsytrd_lwork(d, lower=1)[0])
    reflectors, diagonal, off_diagonal, tau, info = lapack.dsytrd(a, lower=1, lwork=lwork)
    if info != 0:
        raise np.linalg.LinAlgError(f"dsytrd failed (info {info})")
    try:  # divide and conquer, as dsyevd (scipy's eigh_tridiagonal only offers it from scipy 1.15 on)
        eigenvalues, w, info = lapack.dstevd(diagonal, off_diagonal)
    except AttributeError:
        eigenvalues, w, info = *eigh_tridiagonal(diagonal, off_diagonal, lapack_driver="stemr"), 0
    if info != 0:
        raise np.linalg.LinAlgError(f"the tridiagonal eigensolver failed (info {info})")
    # Q = H(1) ... H(d-1), H(i)'s vector in column i below the subdiagonal: dormtr's lower case is dormqr on the
    # (d-1) x (d-1) block below the diagonal, applied to rows 1.. of b
    rotated = b.copy()
    rotated[1:], _, info = lapack.dormqr("L", "T", reflectors[1:, :-1], tau, b[1:], max(1, b.shape[1]) * 64)
    if info != 0:
        raise np.linalg.LinAlgError(f"dormqr failed (info {info})")
    return eigenvalues, w.T @ rotated


def _maximise(shape: tuple[int, int], s: np.ndarray, x: np.ndarray, yy: float) -> Evidence:
    """MacKay's fixed point for (alpha, beta) in the features' singular basis (``s``; ``x`` = U^T y, ``yy`` =
    |y|^2), computed once for every class."""
    n, d = shape
    sigma = s**2  # the non-zero eigenvalues of F^T F (the rest, up to d, are 0)
    outside = max(yy - float(x @ x), 0.0)  # the part of y no feature direction reaches
    alpha, beta, iterations = 1.0, 1.0, 0
    while iterations < LOGME_MAX_ITERATIONS:
        iterations += 1
        shrink = alpha + beta * sigma
        gamma = float((beta * sigma / shrink).sum())
        m2 = float(((beta * s * x / shrink) ** 2).sum())
        res2 = float(((alpha * x / shrink) ** 2).sum()) + outside
        new_alpha, new_beta = gamma / max(m2, 1e-300), (n - gamma) / max(res2, 1e-300)
        converged = abs(new_alpha - alpha) / alpha < LOGME_TOLERANCE and abs(new_beta - beta) / beta < LOGME_TOLERANCE
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    return Evidence(_evidence(n, d, sigma, x, outside, alpha, beta), alpha, beta, iterations)


def _evidence(n: int, d: int, sigma: np.ndarray, x: np.ndarray, outside: float, alpha: float, beta: float) -> float:
    shrink = alpha + beta * sigma
    m2 = float(((beta * np.sqrt(sigma) * x / shrink) ** 2).sum())
    res2 = float(((alpha * x / shrink) ** 2).sum()) + outside
    logdet = float(np.log(shrink).sum()) + (d - len(sigma)) * np.log(alpha)
    total = (n * np.log(beta) + d * np.log(alpha) - n * np.log(2 * np.pi) - beta * res2 - alpha * m2 - logdet) / 2
    return total / n


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the mean over classes of the maximised evidence per sample for the class's one-hot target."""
    f, y = _as_inputs(features, labels)
    return _logme(f, _Classes.of(f, y), _scatter(f) if len(f) > f.shape[1] else None)


@dataclass(frozen=True)
class _Classes:
    """The classes present: their one-hot columns, counts and feature sums (``F^T onehot``, transposed)."""

    onehot: np.ndarray  # n x C, float64
    counts: np.ndarray  # C
    sums: np.ndarray  # C x d

    @classmethod
    def of(cls, f: np.ndarray, y: np.ndarray) -> _Classes:
        classes = np.unique(y)
        onehot = (y[:, None] == classes[None, :]).astype(np.float64)  # one column per class present
        return cls(onehot, onehot.sum(axis=0), onehot.T @ f)


def _logme(f: np.ndarray, classes: _Classes, scatter: _Scatter | None) -> float:
    """LogME from the features' scatter (``None``: no more samples than features, the thin SVD instead)."""
    if scatter is None:
        s, x = _thin_svd_basis(f, classes.onehot)
    else:
        s, x = _gram_basis(scatter.gram, classes.sums.T)
    return float(np.mean([_maximise(f.shape, s, x[:, i], float(count)).evidence
                          for i, count in enumerate(classes.counts)]))


def _joint(source_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The empirical joint P(y, z) = 1/n sum_i theta(x_i)_z [y_i = y], a (C x Z) table."""
    probs = np.asarray(source_probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"source probabilities must be n x Z, got {probs.shape} for {len(labels)} labels")
    if (probs < 0).any() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("source probabilities must be non-negative rows that sum to 1 (a softmax, not logits)")
    onehot = np.eye(int(labels.max()) + 1)[labels]
    return onehot.T @ probs / len(labels)


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: 1/n sum_i log sum_z P(y_i | z) theta(x_i)_z, with P(y | z) from the empirical joint."""
    y = np.asarray(labels).astype(np.int64)
    probs = np.asarray(source_probs, dtype=np.float64)
    joint = _joint(probs, y)
    conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-300)  # P(y | z)
    expected = (probs * conditional[y]).sum(axis=1)  # the EEP of each sample's own label
    return float(np.log(np.maximum(expected, 1e-300)).mean())


def nce(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """NCE: -H(Y | Z) = sum_{y,z} P(y, z) log P(y | z), with z the source head's top class of each image."""
    y = np.asarray(labels).astype(np.int64)
    z = np.asarray(source_probs).argmax(axis=1)
    joint = np.zeros((int(y.max()) + 1, int(z.max()) + 1))
    np.add.at(joint, (y, z), 1.0 / len(y))
    p_z = joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log((joint / np.maximum(p_z, 1e-300))[nonzero])).sum())


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: bool = False) -> float:
    """H-score: tr(cov(f)^-1 cov(E[f | y])), the covariances with 1/n; ``shrinkage``: cov(f) by Ledoit-Wolf."""
    f, y = _as_inputs(features, labels)
    return h_scores(f, y)["h_score_shrinkage" if shrinkage else "h_score"]


def h_scores(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Both H-scores from one covariance: ``h_score`` (pinv of the sample covariance) and ``h_score_shrinkage``
    (the Ledoit-Wolf covariance)."""
    f, y = _as_inputs(features, labels)
    return _h_scores(f, _Classes.of(f, y), _scatter(f))


CHOLESKY_RCOND = 1e-8  # below this estimate of the reciprocal condition number, the eigendecomposition (pinv) path


def _h_scores(f: np.ndarray, classes: _Classes, scatter: _Scatter) -> dict[str, float]:
    """cov(E[f | y]) = sum_y P(y) m_y m_y^T (m_y the centred class means), so tr(cov^-1 cov(E[f | y])) =
    sum_y P(y) m_y^T cov^-1 m_y: two triangular solves with C right-hand sides once cov = L L^T (d^3 / 3). A
    covariance that is singular or ill-conditioned (LAPACK's estimate of its reciprocal condition number in the
    1-norm, which bounds the 2-norm one, below ``CHOLESKY_RCOND``) takes the eigendecomposition instead, with
    pinv's cut-off; both agree wherever the Cholesky path is taken, as no eigenvalue is cut there."""
    n, d = f.shape
    cov = scatter.scatter / n
    weights = classes.counts / n  # P(y)
    means = classes.sums / classes.counts[:, None] - scatter.mean  # C x d
    amount, mu = _ledoit_wolf(scatter.fourth, cov, n)
    shrunk = (1 - amount) * cov
    shrunk[np.diag_indices(d)] += amount * mu  # (1 - s) cov + s mu I
    plain = _cholesky_trace(cov, means, weights) if n > d else None  # n <= d: cov is singular
    regularised = _cholesky_trace(shrunk, means, weights)
    if plain is None or regularised is None:
        # cov = Q Lambda Q^T: sum_y P(y) |Lambda^+1/2 Q^T m_y|^2; the Ledoit-Wolf covariance has the same Q
        eigenvalues, q = np.linalg.eigh(cov)
        projected = (means @ q) ** 2  # C x d
        if plain is None:
            keep = eigenvalues > eigenvalues.max(initial=0.0) * 1e-12  # pinv's cut-off: directions with no variance
            plain = float(weights @ (projected[:, keep] / eigenvalues[keep]).sum(axis=1))
        if regularised is None:
            spectrum = (1 - amount) * eigenvalues + amount * mu
            keep = spectrum > spectrum.max(initial=0.0) * 1e-12
            regularised = float(weights @ (projected[:, keep] / spectrum[keep]).sum(axis=1))
    return {"h_score": plain, "h_score_shrinkage": regularised}


def _cholesky_trace(cov: np.ndarray, means: np.ndarray, weights: np.ndarray) -> float | None:
    """sum_y P(y) m_y^T cov^-1 m_y = sum_y P(y) |L^-1 m_y|^2 with cov = L L^T; None when cov is not positive
    definite or its estimated reciprocal condition number is below ``CHOLESKY_RCOND``."""
    from scipy.linalg import lapack, solve_triangular

    factor, info = lapack.dpotrf(cov, lower=1, clean=1)
    if info != 0:
        return None
    rcond, info = lapack.dpocon(factor, float(np.abs(cov).sum(axis=0).max()), uplo="L")
    if info != 0 or not rcond >= CHOLESKY_RCOND:
        return None
    solved = solve_triangular(factor, means.T, lower=True, check_finite=False)  # d x C
    return float(weights @ (solved**2).sum(axis=0))


def ledoit_wolf_shrinkage(centred: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    """Ledoit and Wolf's (2004) shrinkage amount s and target scale mu (cov -> (1 - s) cov + s mu I) of centred
    features, as scikit-learn's ``LedoitWolf`` computes them, but from the covariance already at hand: its
    sum over samples of |x|^4 needs no second d x d product."""
    fourth = float((np.einsum("ij,ij->i", centred, centred) ** 2).sum())  # sum of (X^2)^T X^2 over all entries
    return _ledoit_wolf(fourth, cov, len(centred))


def _ledoit_wolf(fourth: float, cov: np.ndarray, n: int) -> tuple[float, float]:
    d = len(cov)
    mu = float(np.trace(cov)) / d
    delta_ = float((cov**2).sum())  # |X^T X|_F^2 / n^2
    beta = (fourth / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * float(np.trace(cov)) + d * mu**2) / d
    beta = min(beta, delta)
    return (0.0 if beta == 0 else beta / delta), mu


@dataclass(frozen=True)
class KnnAccuracy:
    accuracy: float
    k: int
    metric: str


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = KNN_K, metric: str = KNN_METRIC,
                 block: int = 2048) -> KnnAccuracy:
    """Leave-one-out k-NN accuracy: each sample classified by the majority label of its k nearest other samples
    (ties to the lowest label), ``metric`` ``cosine`` or ``euclidean``."""
    f, y = _as_inputs(features, labels)
    return _knn_accuracy(f, y, k, metric, block)


def _knn_accuracy(f: np.ndarray, y: np.ndarray, k: int, metric: str, block: int) -> KnnAccuracy:
    import torch

    k = min(k, len(y) - 1)
    neighbours = torch.from_numpy(leave_one_out_neighbours(f, k, metric, block))
    target = torch.from_numpy(y)
    votes = torch.zeros(len(y), int(y.max()) + 1).scatter_add_(1, target[neighbours], torch.ones(len(y), k))
    return KnnAccuracy(float((votes.argmax(dim=1) == target).double().mean()), k, metric)  # ties to the lowest label


def leave_one_out_neighbours(features: np.ndarray, k: int, metric: str = KNN_METRIC, block: int = 2048) -> np.ndarray:
    """The indices of each sample's k nearest other samples (``n x k``, nearest first), exact, by float32
    similarities (numpy's BLAS: about 20% faster than torch's here) and torch's top-k. The similarity is symmetric,
    so each pair is computed once (about half the n^2 d products of a full n x n matrix): ``block`` rows at a time
    against themselves and every later row, whose top k by row serve the block's samples and whose top k by column
    serve the later ones; each sample's k nearest are the top k of its candidates."""
    import torch

    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be cosine or euclidean, not {metric!r}")
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    n = len(x)
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1} for {n} samples, not {k}")
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    # nearest = largest x_i . x_j - |x_i|^2 / 2 - |x_j|^2 / 2 (the euclidean order, and symmetric); for unit rows
    # (cosine) the dot product alone
    half_norms = (x * x).sum(dim=1) / 2 if metric == "euclidean" else None
    rows = x.numpy()
    buffer = np.empty(min(block, n) * n, dtype=np.float32)  # one block's similarities, reused
    starts = range(0, n, block)
    values: list[list[torch.Tensor]] = [[] for _ in starts]
    indices: list[list[torch.Tensor]] = [[] for _ in starts]
    for b, start in enumerate(starts):
        stop = min(start + block, n)
        out = buffer[:(stop - start) * (n - start)].reshape(stop - start, n - start)
        closeness = torch.from_numpy(np.matmul(rows[start:stop], rows[start:].T, out=out))  # block x later rows
        if half_norms is not None:
            closeness -= half_norms[start:stop, None] + half_norms[None, start:]
        closeness[:, :stop - start].fill_diagonal_(-torch.inf)  # no sample is its own neighbour
        top = closeness.topk(min(k, n - start), dim=1)
        values[b].append(top.values)
        indices[b].append(top.indices + start)
        for later, other in enumerate(starts[b + 1:], start=b + 1):
            columns = closeness[:, other - start:min(other + block, n) - start]
            top = columns.topk(min(k, stop - start), dim=0)  # the block's rows nearest to each later sample
            values[later].append(top.values.T)
            indices[later].append(top.indices.T + start)
    nearest = []
    for b in range(len(starts)):
        candidates = torch.cat(values[b], dim=1)
        order = candidates.topk(k, dim=1).indices
        nearest.append(torch.cat(indices[b], dim=1).gather(1, order))
    return torch.cat(nearest).numpy()


def knn_votes(queries: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray, k: int = KNN_K,
              metric: str = KNN_METRIC, leave_out_self: bool = False, block: int = 2048) -> np.ndarray:
    """The labels of each query's k nearest reference samples, counted per class (``queries x classes``).
    ``leave_out_self``: the queries are the reference, and no sample counts as its own neighbour. float32
    similarities in torch, ``block`` queries at a time (scikit-learn's float64 brute force takes several times
    as long at 10,000 x 2048)."""
    import torch

    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be cosine or euclidean, not {metric!r}")
    ref = torch.from_numpy(np.asarray(reference, dtype=np.float32))
    query = torch.from_numpy(np.asarray(queries, dtype=np.float32))
    if metric == "cosine":
        ref, query = torch.nn.functional.normalize(ref, dim=1), torch.nn.functional.normalize(query, dim=1)
    # nearest = largest q . r - |r|^2 / 2 (the euclidean order); for unit rows (cosine) the dot product alone
    offset = (ref * ref).sum(dim=1) / 2 if metric == "euclidean" else torch.zeros(len(ref))
    target = torch.from_numpy(np.asarray(reference_labels, dtype=np.int64))
    votes = torch.zeros(len(query), int(target.max()) + 1)
    for start in range(0, len(query), block):
        rows = torch.arange(start, min(start + block, len(query)))
        closeness = query[rows] @ ref.T - offset
        if leave_out_self:
            closeness[torch.arange(len(rows)), rows] = -torch.inf
        neighbours = closeness.topk(k, dim=1).indices
        votes[rows] = votes[rows].scatter_add_(1, target[neighbours], torch.ones(len(rows), k))
    return votes.numpy()


def estimate_all(features: np.ndarray, labels: np.ndarray, source_probs: np.ndarray | None = None,
                 k: int = KNN_K, metric: str = KNN_METRIC) -> dict[str, float | None]:
    """Every estimator of ``ESTIMATORS`` on one split; LogME and the two H-scores share one pass over the features
    (their scatter matrix, from which the Gram matrix follows) and the class sums. LEEP and NCE are None without the
    source head's probabilities."""
    f, y = _as_inputs(features, labels)
    classes, scatter = _Classes.of(f, y), _scatter(f)
    scores: dict[str, float | None] = {"logme": _logme(f, classes, scatter if len(f) > f.shape[1] else None)}
    scores["leep"] = leep(source_probs, y) if source_probs is not None else None
    scores["nce"] = nce(source_probs, y) if source_probs is not None else None
    scores.update(_h_scores(f, classes, scatter))
    scores["knn_accuracy"] = _knn_accuracy(f, y, k, metric, 2048).accuracy
    return scores
