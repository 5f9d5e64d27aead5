"""OTDD at paper scale: ImageNet val's 1000 classes against a 200- and a 1000-class D_ft.

Features are synthetic (768-d like ViT-B/16's pre-logits: a random mean per class, anisotropic
noise), at the configuration's sample count per dataset (`distance.samples`, 5000 in
configs/imagenet-rib.yaml). Prints the time of each part (class Gaussians, label distances,
Sinkhorn) and the distance, then checks the label distances against the dense closed form (two
eigendecompositions per pair, what rib did before) on a 50-class case.

    python benchmarks/otdd.py [--samples 5000] [--dim 768] [--ft-classes 200 1000] [--check-classes 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def features(rng: np.random.Generator, classes: int, samples: int, dim: int, shift: float = 0.0):
    means = rng.normal(size=(classes, dim)) * 0.5 + shift
    scales = rng.uniform(0.2, 1.0, dim)
    y = np.arange(samples) % classes
    x = means[y] + rng.normal(size=(samples, dim)) * scales
    return x.astype(np.float32), y


def main() -> None:
    from rib import distance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--reference-classes", type=int, default=1000)
    ap.add_argument("--ft-classes", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--check-classes", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x1, y1 = features(rng, args.reference_classes, args.samples, args.dim)
    print(f"reference: {args.reference_classes} classes, {args.samples} samples, {args.dim}-d")
    for classes in args.ft_classes:
        x2, y2 = features(rng, classes, args.samples, args.dim, shift=0.3)
        t = time.perf_counter()
        g1, g2 = distance.class_gaussians(x1, y1), distance.class_gaussians(x2, y2)
        t_gauss = time.perf_counter() - t
        t = time.perf_counter()
        for a, b in ((g1, g2), (g1, g1), (g2, g2)):
            distance.label_distances(a, b)
        t_labels = time.perf_counter() - t
        t = time.perf_counter()
        result = distance.otdd(x1, y1, x2, y2)
        t_total = time.perf_counter() - t
        print(f"D_ft {classes} classes: OTDD {result['otdd']:.4f}; class Gaussians {t_gauss:.1f} s, label distances "
              f"(cross and both self terms: {args.reference_classes}x{classes} + {args.reference_classes}^2 + "
              f"{classes}^2 pairs) {t_labels:.1f} s; whole debiased OTDD {t_total:.1f} s")
    # The label distances against the dense closed form on a smaller case.
    n = args.check_classes
    xa, ya = features(rng, n, 20 * n, args.dim)
    xb, yb = features(rng, n, 20 * n, args.dim, shift=0.3)
    ga, gb = distance.class_gaussians(xa, ya), distance.class_gaussians(xb, yb)
    t = time.perf_counter()
    fast = distance.label_distances(ga, gb)
    t_fast = time.perf_counter() - t

    def stats(x, y, c):
        f = x[y == c].astype(np.float64)
        return f.mean(0), np.cov(f, rowvar=False)

    t = time.perf_counter()
    pairs = [(a, b) for a in range(n) for b in range(n)]
    dense = np.zeros((n, n))
    sa = [stats(xa, ya, c) for c in range(n)]
    sb = [stats(xb, yb, c) for c in range(n)]
    for a, b in pairs:
        dense[a, b] = distance.bures_wasserstein2(*sa[a], *sb[b])
    t_dense = time.perf_counter() - t
    rel = np.abs(fast - dense).max() / np.abs(dense).max()
    print(f"check, {n}x{n} classes of 20 samples, {args.dim}-d: largest difference {rel:.2e} of the largest "
          f"distance; {t_fast:.2f} s against {t_dense:.1f} s for the dense closed form")


if __name__ == "__main__":
    main()
