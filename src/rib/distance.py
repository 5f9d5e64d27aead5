"""Dataset distance: the optimal-transport dataset distance (OTDD, Alvarez-Melis & Fusi, 2020).

Two labelled datasets are compared as distributions over (feature, label) pairs. The ground cost
between ``(x, y)`` and ``(x', y')`` is ``||x - x'||^2 + W2(y, y')^2``, where a label is the
distribution of the features of its class, modelled as a Gaussian, so ``W2(y, y')`` is the
Bures-Wasserstein distance between the two class Gaussians. The distance is the square root of
the entropic optimal-transport cost under that ground cost (POT's Sinkhorn, log-domain, with the
reference settings: entropic regularisation 0.1, here relative to the largest ground cost between
the two datasets so that it means the same for any feature scale; Gaussian label distances). With ``debias`` the
Sinkhorn divergence ``OT(a, b) - (OT(a, a) + OT(b, b)) / 2`` is used instead, which is exactly zero
for identical datasets.

rib computes it between the pretraining-domain data and each fine-tuning dataset, on the
pretrained model's pre-logit features; the paper reports that it predicts the accuracy lost on
the pretraining domain.
"""

from __future__ import annotations

import numpy as np
import ot


def class_gaussians(features: np.ndarray, labels: np.ndarray, shrinkage: float = 1e-6):
    """(classes, means (C, d), covariances (C, d, d)) of each label's features."""
    classes = np.unique(labels)
    d = features.shape[1]
    means, covs = [], []
    for c in classes:
        f = features[labels == c].astype(np.float64)
        means.append(f.mean(axis=0))
        cov = np.cov(f, rowvar=False) if len(f) > 1 else np.zeros((d, d))
        covs.append(np.atleast_2d(cov) + shrinkage * np.eye(d))
    return classes, np.stack(means), np.stack(covs)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((c + c.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def bures_wasserstein2(m1, c1, m2, c2) -> float:
    """Squared 2-Wasserstein distance between N(m1, c1) and N(m2, c2):
    ``||m1 - m2||^2 + tr(c1 + c2 - 2 (c1^1/2 c2 c1^1/2)^1/2)``. Eigenvalues are clipped at zero, so
    the rank-deficient covariances of classes with fewer images than feature dimensions are fine."""
    r1 = _psd_sqrt(c1)
    cross = _psd_sqrt(r1 @ c2 @ r1)
    value = float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(cross))
    return max(value, 0.0)


def label_distances(g1, g2) -> np.ndarray:
    """Squared Bures-Wasserstein distances between every class Gaussian of two datasets."""
    (_, m1, c1), (_, m2, c2) = g1, g2
    return np.array([[bures_wasserstein2(m1[i], c1[i], m2[j], c2[j]) for j in range(len(m2))]
                     for i in range(len(m1))])


def ground_cost(x1, y1, g1, x2, y2, g2) -> np.ndarray:
    """``||x_i - x'_j||^2 + W2(y_i, y'_j)^2`` for every pair of samples."""
    feature = ot.dist(x1.astype(np.float64), x2.astype(np.float64), metric="sqeuclidean")
    labels = label_distances(g1, g2)
    i1 = np.searchsorted(g1[0], y1)
    i2 = np.searchsorted(g2[0], y2)
    return feature + labels[np.ix_(i1, i2)]


def _cost_matrix(x1, y1, x2, y2) -> np.ndarray:
    return ground_cost(x1, y1, class_gaussians(x1, y1), x2, y2, class_gaussians(x2, y2))


def _ot_cost(cost: np.ndarray, reg: float, scale: float) -> float:
    """Entropic OT cost with uniform weights; ``reg`` is relative to ``scale`` (the same for every
    term of a debiased divergence, so that the entropic biases cancel)."""
    a = np.full(cost.shape[0], 1.0 / cost.shape[0])
    b = np.full(cost.shape[1], 1.0 / cost.shape[1])
    return scale * float(ot.sinkhorn2(a, b, cost / scale, reg, method="sinkhorn_log", numItermax=10000,
                                      stopThr=1e-9))


def subsample(x: np.ndarray, y: np.ndarray, max_samples: int | None, seed: int):
    if max_samples is None or len(x) <= max_samples:
        return x, y
    pick = np.sort(np.random.default_rng(seed).choice(len(x), size=max_samples, replace=False))
    return x[pick], y[pick]


def otdd(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, *, reg: float = 0.1,
         max_samples: int | None = None, seed: int = 0, debias: bool = True) -> dict:
    """OTDD between two labelled feature sets; returns the distance and how it was computed."""
    x1, y1 = subsample(x1, y1, max_samples, seed)
    x2, y2 = subsample(x2, y2, max_samples, seed + 1)
    cross = _cost_matrix(x1, y1, x2, y2)
    scale = float(cross.max()) or 1.0  # reg is relative to the largest ground cost between the datasets
    cost = _ot_cost(cross, reg, scale)
    if debias:
        cost -= 0.5 * (_ot_cost(_cost_matrix(x1, y1, x1, y1), reg, scale)
                       + _ot_cost(_cost_matrix(x2, y2, x2, y2), reg, scale))
    return {"otdd": float(np.sqrt(max(cost, 0.0))), "ot_cost": cost, "reg": reg, "debias": debias,
            "n": [len(x1), len(x2)], "classes": [len(np.unique(y1)), len(np.unique(y2))]}
