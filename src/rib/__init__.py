"""rib: the ImageNet-RIB robustness benchmark as a reproducible pipeline."""

__version__ = "0.1.0"
