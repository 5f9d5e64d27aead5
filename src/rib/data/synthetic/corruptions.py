"""The 15 ImageNet-C corruptions at 5 severities, re-implemented for small synthetic images.

Names and families follow Hendrycks & Dietterich (2019). The severity parameters follow the
original where they are scale-free (noise levels, contrast, brightness, JPEG quality) and are
rescaled from 224-pixel images to this suite's size where they are lengths (blur radii, zoom,
displacements). Frost uses a procedural ice texture instead of the original photographs.
Every function maps (float32 HxWx3 image in [0, 1], severity 1..5, generator) to the same.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _pick(values, severity: int):
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    return values[severity - 1]


def gaussian_noise(x, severity, rng):
    c = _pick([0.08, 0.12, 0.18, 0.26, 0.38], severity)
    return x + rng.normal(0, c, x.shape)


def shot_noise(x, severity, rng):
    c = _pick([60, 25, 12, 5, 3], severity)
    return rng.poisson(x.clip(0, 1) * c) / c


def impulse_noise(x, severity, rng):
    amount = _pick([0.03, 0.06, 0.09, 0.17, 0.27], severity)
    out = x.copy()
    hit = rng.uniform(size=x.shape) < amount
    out[hit] = (rng.uniform(size=int(hit.sum())) < 0.5).astype(np.float32)
    return out


def _disk(radius: float) -> np.ndarray:
    """An anti-aliased disk kernel: pixels are weighted by how much of them the disk covers."""
    r = int(math.ceil(radius + 0.5))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    k = np.clip(radius + 0.5 - np.sqrt(xx**2 + yy**2), 0.0, 1.0).astype(np.float32)
    return k / k.sum()


def _convolve(x, kernel):
    return np.stack([ndimage.convolve(x[..., c], kernel, mode="reflect") for c in range(3)], axis=-1)


def defocus_blur(x, severity, rng):
    radius = _pick([0.6, 0.9, 1.2, 1.6, 2.0], severity)
    return _convolve(x, _disk(radius))


def glass_blur(x, severity, rng):
    sigma, delta, iterations = _pick([(0.4, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 2), (0.8, 2, 3)], severity)
    out = ndimage.gaussian_filter(x, (sigma, sigma, 0))
    h, w = x.shape[:2]
    for _ in range(iterations):  # swap each pixel with a random close neighbour
        dy = rng.integers(-delta, delta + 1, (h, w))
        dx = rng.integers(-delta, delta + 1, (h, w))
        yy, xx = np.mgrid[0:h, 0:w]
        out = out[(yy + dy).clip(0, h - 1), (xx + dx).clip(0, w - 1)]
    return ndimage.gaussian_filter(out, (sigma, sigma, 0))


def motion_blur(x, severity, rng):
    length = _pick([2, 3, 4, 5, 6], severity)
    angle = rng.uniform(-np.pi / 4, np.pi / 4)
    size = 2 * length + 1
    k = np.zeros((size, size), np.float32)
    for t in np.linspace(0, length, 4 * length + 1):  # a one-sided streak, as a moving camera gives
        k[int(round(length + t * math.sin(angle))), int(round(length + t * math.cos(angle)))] = 1.0
    return _convolve(x, k / k.sum())


def zoom_blur(x, severity, rng):
    top = _pick([1.06, 1.11, 1.16, 1.21, 1.26], severity)
    h = x.shape[0]
    acc = x.copy()
    zooms = np.arange(1.0 + 0.02, top + 1e-6, 0.02)
    for z in zooms:
        zoomed = ndimage.zoom(x, (z, z, 1), order=1)
        o = (zoomed.shape[0] - h) // 2
        acc += zoomed[o:o + h, o:o + h]
    return acc / (len(zooms) + 1)


def _plasma(size: int, rng: np.random.Generator, roughness: float) -> np.ndarray:
    """Fractal noise in [0, 1]: octaves of smoothly upsampled random grids."""
    out = np.zeros((size, size), np.float32)
    amp, grid = 1.0, 2
    while grid <= size:
        cells = rng.uniform(size=(grid, grid))
        out += amp * ndimage.zoom(cells, size / grid, order=1, mode="nearest", grid_mode=True)[:size, :size]
        amp *= roughness
        grid *= 2
    out -= out.min()
    return out / max(out.max(), 1e-6)


def fog(x, severity, rng):
    strength, rough = _pick([(0.3, 0.6), (0.4, 0.6), (0.5, 0.55), (0.6, 0.5), (0.75, 0.45)], severity)
    m = x.max()
    out = x + strength * _plasma(x.shape[0], rng, rough)[..., None]
    return out * m / (m + strength)


def frost(x, severity, rng):
    w_img, w_frost = _pick([(1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)], severity)
    ice = _plasma(x.shape[0], rng, 0.8)
    crystals = (ice > np.quantile(ice, 0.55)).astype(np.float32) * 0.5 + ice * 0.5
    texture = np.stack([crystals * 0.85, crystals * 0.93, crystals], axis=-1)
    return w_img * x + w_frost * texture


def snow(x, severity, rng):
    density, flake_len, bright = _pick([(0.04, 2, 0.1), (0.06, 2, 0.2), (0.08, 3, 0.25), (0.1, 3, 0.3),
                                        (0.13, 4, 0.35)], severity)
    h, w = x.shape[:2]
    flakes = (rng.uniform(size=(h, w)) < density).astype(np.float32)
    k = np.zeros((2 * flake_len + 1, 2 * flake_len + 1), np.float32)
    for t in range(-flake_len, flake_len + 1):  # falling streaks
        k[flake_len + t, flake_len + t // 2] = 1.0
    flakes = ndimage.convolve(flakes, k, mode="wrap").clip(0, 1)
    gray = x.mean(-1, keepdims=True)
    base = x * (1 - bright) + bright * np.maximum(x, gray * 1.5 + 0.5)
    return np.maximum(base, flakes[..., None])


def brightness(x, severity, rng):
    c = _pick([0.1, 0.2, 0.3, 0.4, 0.5], severity)
    return x + c


def contrast(x, severity, rng):
    c = _pick([0.4, 0.3, 0.2, 0.1, 0.05], severity)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * c + mean


def elastic_transform(x, severity, rng):
    alpha, sigma = _pick([(1.0, 1.5), (1.5, 1.5), (2.0, 1.2), (2.5, 1.2), (3.0, 1.0)], severity)
    h, w = x.shape[:2]
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha * sigma * 2
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha * sigma * 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = [yy + dy, xx + dx]
    return np.stack([ndimage.map_coordinates(x[..., c], coords, order=1, mode="reflect") for c in range(3)], -1)


def pixelate(x, severity, rng):
    factor = _pick([0.6, 0.5, 0.4, 0.3, 0.25], severity)
    h, w = x.shape[:2]
    img = Image.fromarray((x.clip(0, 1) * 255 + 0.5).astype(np.uint8))
    small = img.resize((max(1, int(w * factor)), max(1, int(h * factor))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.NEAREST), np.float32) / 255.0


def jpeg_compression(x, severity, rng):
    quality = _pick([25, 18, 15, 10, 7], severity)
    buf = io.BytesIO()
    Image.fromarray((x.clip(0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255.0


# The ImageNet-C order: noise, blur, weather, digital.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    if name not in CORRUPTIONS:
        raise KeyError(f"unknown corruption {name!r}; expected one of {', '.join(CORRUPTIONS)}")
    out = CORRUPTIONS[name](np.asarray(image, np.float32), severity, rng)
    return np.asarray(out, np.float32).clip(0, 1)
