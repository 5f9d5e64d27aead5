"""OTDD (rib.distance) on cases with a known answer, and on a real model's features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rib.cli import main
from rib.distance import bures_wasserstein2, class_gaussians, label_distances, otdd


def _gaussian(rng, mean, cov, n):
    return rng.multivariate_normal(mean, cov, n)


def test_identical_datasets_are_at_distance_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    y = rng.integers(0, 4, 200)
    assert otdd(x, y, x.copy(), y.copy())["otdd"] == pytest.approx(0.0, abs=1e-6)
    # without debiasing the entropic blur keeps it above zero, but far below a real shift
    blurred = otdd(x, y, x.copy(), y.copy(), debias=False)["otdd"]
    shifted = otdd(x, y, x + 3.0, y, debias=False)["otdd"]
    assert 0 < blurred < shifted


def test_bures_wasserstein_closed_form():
    m1, m2 = np.zeros(2), np.array([3.0, 4.0])
    assert bures_wasserstein2(m1, np.eye(2), m2, np.eye(2)) == pytest.approx(25.0)
    # 1-D: W2^2 = (m1 - m2)^2 + (s1 - s2)^2
    assert bures_wasserstein2(np.zeros(1), np.array([[4.0]]), np.ones(1), np.array([[9.0]])) == pytest.approx(1 + 1)
    # rank-deficient covariances (fewer images than dimensions) stay finite
    c = np.outer([1.0, 0, 0], [1.0, 0, 0])
    assert np.isfinite(bures_wasserstein2(np.zeros(3), c, np.zeros(3), np.eye(3)))


def test_two_gaussians_give_their_bures_wasserstein_distance():
    rng = np.random.default_rng(1)
    m1, m2 = np.zeros(3), np.array([2.0, 0.0, 1.0])
    a = rng.normal(size=(3, 3))
    c1, c2 = np.eye(3), a @ a.T / 3 + 0.5 * np.eye(3)
    n = 800
    x1, x2 = _gaussian(rng, m1, c1, n), _gaussian(rng, m2, c2, n)
    one = np.zeros(n, dtype=int)
    bw = np.sqrt(bures_wasserstein2(m1, c1, m2, c2))
    # One class each: the feature transport costs W2^2 and the label term adds the same W2^2 again.
    result = otdd(x1, one, x2, one)
    assert result["otdd"] / np.sqrt(2) == pytest.approx(bw, rel=0.06)
    # The label distances are the class Gaussians' Bures-Wasserstein distances (from samples).
    w = label_distances(class_gaussians(x1, one), class_gaussians(x2, one))
    assert np.sqrt(w[0, 0]) == pytest.approx(bw, rel=0.06)


@pytest.mark.parametrize("per_class", [1, 3, 7, 40])  # a single image; fewer, and more, than dimensions
def test_label_distances_equal_the_closed_form_on_the_sample_covariances(per_class):
    """The nuclear-norm form equals two eigendecompositions per pair (bures_wasserstein2) on the
    classes' sample means and covariances, whatever the class sizes, in any batch size."""
    rng = np.random.default_rng(per_class)
    d = 12
    x1 = rng.normal(size=(5 * per_class, d)) * rng.uniform(0.5, 2, d)
    y1 = np.repeat(np.arange(5), per_class)
    x2 = rng.normal(size=(4 * (per_class + 2), d)) + 1.0
    y2 = np.repeat([3, 5, 8, 9], per_class + 2)  # other sizes and labels
    g1, g2 = class_gaussians(x1, y1), class_gaussians(x2, y2)

    def stats(x, y, c):
        f = x[y == c]
        return f.mean(0), (np.cov(f, rowvar=False) if len(f) > 1 else np.zeros((d, d)))

    dense = np.array([[bures_wasserstein2(*stats(x1, y1, a), *stats(x2, y2, b)) for b in g2.classes]
                      for a in g1.classes])
    for block in (1 << 28, 1):  # one batch; one class of the first dataset at a time
        fast = label_distances(g1, g2, device="cpu", block_bytes=block)
        np.testing.assert_allclose(fast, dense, rtol=1e-7, atol=1e-8)
    assert g1.factors.shape[1] == min(per_class, d)  # more images than dimensions: a d x d factor


def test_labels_matter_and_sample_size_is_capped():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] > 0).astype(int)
    same = otdd(x, y, x + 0.01, y)["otdd"]
    # OTDD compares labels through their features: renaming the classes changes nothing...
    assert otdd(x, y, x + 0.01, 1 - y)["otdd"] == pytest.approx(same, rel=1e-6)
    # ...but labels that no longer follow the features make the datasets further apart
    shuffled = otdd(x, y, x + 0.01, rng.integers(0, 2, len(y)))["otdd"]
    assert shuffled > same + 0.1
    capped = otdd(x, y, x, y, max_samples=50)
    assert capped["n"] == [50, 50]


def test_rib_distance_on_the_pretrained_models_features(in_tiny_suite, tiny_pretrained, tmp_path):
    out = tmp_path / "d.json"
    assert main(["distance", "mini_resnet.narrow", "c", "--pretrained", str(tiny_pretrained), "--reference-data",
                 "data/rib-mini/prepared/source", "--data", "data/rib-mini/prepared/c", "--out", str(out), "-q"]) == 0
    rec = json.loads(out.read_text())
    assert rec["otdd"] > 0 and rec["features"] == "pre-logits" and rec["reference"] == "source"
    assert rec["n"][0] <= 50 and rec["settings"]["reg"] == 0.1 and len(rec["checkpoint_sha256"]) == 64
    again = tmp_path / "again.json"
    assert main(["distance", "mini_resnet.narrow", "c", "--pretrained", str(tiny_pretrained), "--reference-data",
                 "data/rib-mini/prepared/source", "--data", "data/rib-mini/prepared/c", "--out", str(again), "-q"]) == 0
    assert json.loads(again.read_text())["otdd"] == rec["otdd"]  # reproducible
