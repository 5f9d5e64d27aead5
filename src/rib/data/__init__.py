"""Datasets: suites, on-disk layouts, manifests and held-out splits, label spaces, loading."""
