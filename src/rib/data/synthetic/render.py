"""Rendering primitives and the rendering styles of the synthetic suite.

An image is built from one object (a :class:`~rib.data.synthetic.shapes.ShapeClass`) placed by an
affine map, rasterised as a soft coverage mask, and composited over a background in one of the
suite's styles. All randomness comes from the ``numpy.random.Generator`` passed in, so an image is
a pure function of (style, class, generator state). Images are float32 RGB arrays in [0, 1].
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .shapes import ShapeClass

SUPERSAMPLE = 4


# ----------------------------------------------------------------------------------------------
# Geometry and rasterisation
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Where and how the object sits in the image (unit disk -> pixels)."""

    scale: float  # object radius as a fraction of half the image side
    rotation: float  # radians
    center: tuple[float, float]  # offset of the centre, as a fraction of half the side
    aspect: float = 1.0  # y squash, viewpoint-like foreshortening (1 = none)
    shear: float = 0.0
    squash_angle: float = 0.0  # direction of the foreshortening

    def matrix(self, size: int) -> np.ndarray:
        half = size / 2.0
        r = self.scale * half
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        rot = np.array([[c, -s], [s, c]])
        ca, sa = math.cos(self.squash_angle), math.sin(self.squash_angle)
        axis = np.array([[ca, -sa], [sa, ca]])
        squash = axis @ np.array([[1.0, self.shear], [0.0, self.aspect]]) @ axis.T
        return r * (squash @ rot)

    def to_pixels(self, points: np.ndarray, size: int) -> np.ndarray:
        half = size / 2.0
        offset = np.array([half + self.center[0] * half, half + self.center[1] * half])
        return points @ self.matrix(size).T + offset


def _draw_rings(shape: ShapeClass, placement: Placement, size: int) -> Image.Image:
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for ring in shape.rings:
        pts = placement.to_pixels(ring.points, size) * SUPERSAMPLE
        draw.polygon([tuple(p) for p in pts], fill=0 if ring.hole else 255)
    return canvas


def _downsample(img: Image.Image, size: int) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def coverage(shape: ShapeClass, placement: Placement, size: int) -> np.ndarray:
    """Anti-aliased coverage of the object, (size, size) in [0, 1]."""
    return _downsample(_draw_rings(shape, placement, size), size)


def outline(shape: ShapeClass, placement: Placement, size: int, width: float) -> np.ndarray:
    """Anti-aliased stroke of the object's boundary (holes included), ``width`` pixels wide."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    w = max(1, int(round(width * SUPERSAMPLE)))
    for ring in shape.rings:
        pts = [tuple(p) for p in placement.to_pixels(ring.points, size) * SUPERSAMPLE]
        draw.line(pts + pts[:2], fill=255, width=w, joint="curve")
    return _downsample(canvas, size)


def polygon_mask(points: np.ndarray, size: int) -> np.ndarray:
    """Coverage of an arbitrary polygon given in pixel coordinates."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points * SUPERSAMPLE], fill=255)
    return _downsample(canvas, size)


# ----------------------------------------------------------------------------------------------
# Colours and textures
# ----------------------------------------------------------------------------------------------
def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32)


def luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114], np.float32))


def contrasting(rng: np.random.Generator, against: np.ndarray, sample: Callable[[], np.ndarray],
                min_gap: float = 0.22) -> np.ndarray:
    """Draw colours from ``sample`` until one differs in luminance from ``against`` by ``min_gap``."""
    best, best_gap = None, -1.0
    for _ in range(12):
        c = sample()
        gap = abs(luminance(c) - luminance(against))
        if gap >= min_gap:
            return c
        if gap > best_gap:
            best, best_gap = c, gap
    return best


def flat(size: int, color: np.ndarray) -> np.ndarray:
    return np.broadcast_to(color, (size, size, 3)).astype(np.float32).copy()


def gradient(rng: np.random.Generator, size: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = ((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle)) / math.sqrt(0.5) * 0.5 + 0.5
    t = t.clip(0, 1)[..., None]
    return (c1 * (1 - t) + c2 * t).astype(np.float32)


def blobs(rng: np.random.Generator, size: int, grid: int, sat: tuple[float, float],
          val: tuple[float, float], hue: float | None = None, hue_spread: float = 1.0) -> np.ndarray:
    """Low-frequency colour field: a random grid of colours, smoothly upsampled."""
    base = rng.uniform(0, 1) if hue is None else hue
    cells = np.stack([
        hsv(base + rng.uniform(-0.5, 0.5) * hue_spread, rng.uniform(*sat), rng.uniform(*val))
        for _ in range(grid * grid)
    ]).reshape(grid, grid, 3)
    small = Image.fromarray((cells * 255 + 0.5).astype(np.uint8))
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0


def stripes(size: int, angle: float, period: float, c1: np.ndarray, c2: np.ndarray,
            phase: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    t = (0.5 + 0.5 * np.sin(2 * np.pi * u / period + phase))[..., None]
    return (c1 * (1 - t) + c2 * t).astype(np.float32)


def bricks(rng: np.random.Generator, size: int, brick: np.ndarray, mortar: np.ndarray) -> np.ndarray:
    h = int(rng.integers(4, 7))
    w = 2 * h
    yy, xx = np.mgrid[0:size, 0:size]
    row = yy // h
    shifted = xx + (row % 2) * (w // 2)
    is_mortar = (yy % h == 0) | (shifted % w == 0)
    img = flat(size, brick) * (1 + rng.normal(0, 0.06, (size, size, 1))).astype(np.float32)
    img[is_mortar] = mortar
    return img


def add_noise(rng: np.random.Generator, img: np.ndarray, sigma: float, mono: bool = False) -> np.ndarray:
    shape = img.shape[:2] + ((1,) if mono else (3,))
    return (img + rng.normal(0, sigma, shape).astype(np.float32)).clip(0, 1)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest")


def over(bg: np.ndarray, fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return (bg * (1 - a) + fg * a).astype(np.float32)


def to_gray(img: np.ndarray) -> np.ndarray:
    g = img @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(g[..., None], 3, axis=2)


# ----------------------------------------------------------------------------------------------
# Styles: one function per domain of the suite
# ----------------------------------------------------------------------------------------------
def _placement(rng: np.random.Generator, scale: tuple[float, float], rot_deg: float,
               shift: float, aspect: tuple[float, float] = (0.92, 1.08), shear: float = 0.0,
               full_rotation: bool = False) -> Placement:
    s = rng.uniform(*scale)
    rotation = rng.uniform(0, 2 * np.pi) if full_rotation else math.radians(rng.uniform(-rot_deg, rot_deg))
    room = max(0.0, min(shift, 0.98 - s))
    return Placement(
        scale=s,
        rotation=rotation,
        center=(rng.uniform(-room, room), rng.uniform(-room, room)),
        aspect=rng.uniform(*aspect),
        shear=rng.uniform(-shear, shear),
        squash_angle=rng.uniform(0, np.pi),
    )


def style_source(rng, shape, size, *, scale=(0.55, 0.8), rot=25.0, shift=0.15,
                 fg_sat=(0.5, 1.0), fg_val=(0.4, 1.0), noise=0.02, blur_prob=0.0):
    """Photo-like: a solid, lit object on a smooth low-saturation background."""
    bg_hue = rng.uniform()
    c1 = hsv(bg_hue, rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.95))
    c2 = (c1 + rng.uniform(-0.2, 0.2)).clip(0, 1).astype(np.float32)
    bg = gradient(rng, size, c1, c2)
    fg_color = contrasting(rng, (c1 + c2) / 2, lambda: hsv(rng.uniform(), rng.uniform(*fg_sat), rng.uniform(*fg_val)))
    light = gradient(rng, size, fg_color * 1.15, fg_color * 0.85).clip(0, 1)
    place = _placement(rng, scale, rot, shift)
    img = over(bg, light, coverage(shape, place, size))
    if blur_prob and rng.uniform() < blur_prob:
        img = blur(img, rng.uniform(0.4, 0.7))
    return add_noise(rng, img, noise)


def style_v2(rng, shape, size):
    """A re-collection of the source domain: same renderer, slightly shifted statistics."""
    return style_source(rng, shape, size, scale=(0.45, 0.75), rot=35.0, shift=0.2,
                        fg_sat=(0.35, 0.9), fg_val=(0.35, 0.95), noise=0.04, blur_prob=0.3)


def style_sketch(rng, shape, size):
    """Black strokes on white paper: the outline only, drawn with a shaky double line."""
    paper = flat(size, np.full(3, rng.uniform(0.9, 1.0), np.float32))
    ink = np.full(3, rng.uniform(0.0, 0.3), np.float32)
    place = _placement(rng, (0.55, 0.85), 30.0, 0.15)
    img = paper
    for _ in range(int(rng.integers(1, 3))):
        jitter = Placement(place.scale * rng.uniform(0.97, 1.03), place.rotation + rng.normal(0, 0.04),
                           (place.center[0] + rng.normal(0, 0.03), place.center[1] + rng.normal(0, 0.03)),
                           place.aspect, place.shear, place.squash_angle)
        img = over(img, ink, outline(shape, jitter, size, rng.uniform(0.8, 1.6)) * rng.uniform(0.7, 1.0))
    for _ in range(int(rng.integers(0, 3))):  # stray strokes
        p = rng.uniform(0, size, 2)
        q = p + rng.normal(0, size / 6, 2)
        line = np.array([p, q, q + 0.6, p + 0.6])
        img = over(img, ink, polygon_mask(line, size) * 0.6)
    return add_noise(rng, img, 0.015, mono=True)


CARTOON_PALETTE = [hsv(h, 0.85, 0.95) for h in (0.0, 0.08, 0.15, 0.33, 0.5, 0.6, 0.75, 0.9)]


def style_cartoon(rng, shape, size):
    """Flat colours and a thick black outline, no texture."""
    bg = flat(size, hsv(rng.uniform(), rng.uniform(0.15, 0.4), rng.uniform(0.85, 1.0)))
    fill = CARTOON_PALETTE[int(rng.integers(len(CARTOON_PALETTE)))]
    place = _placement(rng, (0.55, 0.8), 25.0, 0.15)
    if rng.uniform() < 0.5:  # a flat ground shadow
        shadow = Placement(place.scale, place.rotation, (place.center[0] + 0.08, place.center[1] + 0.08),
                           place.aspect, place.shear, place.squash_angle)
        bg = over(bg, bg * 0.75, coverage(shape, shadow, size))
    img = over(bg, fill, coverage(shape, place, size))
    return over(img, np.zeros(3, np.float32), outline(shape, place, size, rng.uniform(1.5, 2.2)))


def style_drawing(rng, shape, size):
    """Pencil on paper: hatched interior, graphite outline, paper grain, no colour."""
    paper_v = rng.uniform(0.85, 0.97)
    paper = flat(size, np.array([paper_v, paper_v * 0.98, paper_v * 0.93], np.float32))
    paper = add_noise(rng, paper, 0.03, mono=True)
    graphite = np.full(3, rng.uniform(0.2, 0.45), np.float32)
    place = _placement(rng, (0.55, 0.8), 25.0, 0.15)
    hatch = stripes(size, rng.uniform(0, np.pi), rng.uniform(2.5, 3.5), paper.mean((0, 1)), graphite)
    hatch = add_noise(rng, hatch, 0.08, mono=True)
    img = over(paper, hatch, coverage(shape, place, size) * rng.uniform(0.6, 0.9))
    img = over(img, graphite, outline(shape, place, size, rng.uniform(0.8, 1.3)) * rng.uniform(0.7, 1.0))
    return to_gray(img)


def _rendition_painting(rng, shape, size):
    bg = blobs(rng, size, 4, (0.2, 0.6), (0.3, 0.9))
    fg = blobs(rng, size, 3, (0.5, 1.0), (0.5, 1.0), hue=rng.uniform(), hue_spread=0.2)
    place = _placement(rng, (0.5, 0.8), 30.0, 0.15)
    alpha = ndimage.gaussian_filter(coverage(shape, place, size), 0.7)
    return add_noise(rng, over(bg, fg, alpha), 0.05)


def _rendition_embroidery(rng, shape, size):
    base = hsv(rng.uniform(), rng.uniform(0.1, 0.3), rng.uniform(0.6, 0.9))
    fabric = stripes(size, 0.0, 2.0, base, base * 0.9) * stripes(size, np.pi / 2, 2.0, np.ones(3), np.full(3, 0.92))
    h = rng.uniform()
    thread = stripes(size, rng.uniform(0, np.pi), rng.uniform(1.8, 3.0), hsv(h, 0.9, 0.9), hsv(h + 0.5, 0.8, 0.7))
    place = _placement(rng, (0.55, 0.8), 30.0, 0.15)
    img = over(fabric.astype(np.float32), thread, coverage(shape, place, size))
    yy, xx = np.mgrid[0:size, 0:size]
    stitch = ((xx + yy) % 3 != 0).astype(np.float32)
    return over(img, hsv(h, 0.3, 0.25), outline(shape, place, size, 1.0) * stitch)


def _rendition_origami(rng, shape, size):
    bg = flat(size, hsv(rng.uniform(), 0.08, rng.uniform(0.8, 0.95)))
    place = _placement(rng, (0.55, 0.8), 30.0, 0.15)
    alpha = coverage(shape, place, size)
    h, s = rng.uniform(), rng.uniform(0.5, 0.9)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fg = flat(size, hsv(h, s, 0.85))
    for _ in range(int(rng.integers(2, 4))):  # folds: half-planes through the object shaded differently
        a = rng.uniform(0, np.pi)
        cx = size / 2 * (1 + place.center[0]) + rng.normal(0, 2)
        cy = size / 2 * (1 + place.center[1]) + rng.normal(0, 2)
        side = ((xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)) > 0
        fg[side] *= rng.uniform(0.65, 0.9)
    return over(bg, fg, alpha)


def _rendition_graffiti(rng, shape, size):
    bg = bricks(rng, size, hsv(rng.uniform(0.0, 0.1), rng.uniform(0.4, 0.7), rng.uniform(0.4, 0.7)),
                hsv(0.1, 0.1, rng.uniform(0.7, 0.85)))
    place = _placement(rng, (0.5, 0.75), 35.0, 0.15)
    h = rng.uniform()
    halo = outline(shape, place, size, rng.uniform(2.0, 3.0))
    img = over(bg, hsv(h + 0.5, 1.0, 1.0), halo)
    img = over(img, hsv(h, 1.0, 1.0), coverage(shape, place, size))
    speckle = (rng.uniform(size=(size, size)) < 0.08).astype(np.float32) * 0.8
    return over(img, hsv(h, 0.9, 1.0), ndimage.binary_dilation(halo > 0.2).astype(np.float32) * speckle)


def _rendition_toy(rng, shape, size):
    bg = gradient(rng, size, hsv(rng.uniform(), 0.2, 0.95), hsv(rng.uniform(), 0.2, 0.6))
    place = _placement(rng, (0.5, 0.75), 30.0, 0.12)
    shadow = Placement(place.scale, place.rotation, (place.center[0] + 0.1, place.center[1] + 0.12),
                       place.aspect, place.shear, place.squash_angle)
    bg = over(bg, bg * 0.55, ndimage.gaussian_filter(coverage(shape, shadow, size), 1.2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    hx = size / 2 * (1 + place.center[0]) - size * 0.12
    hy = size / 2 * (1 + place.center[1]) - size * 0.12
    d = np.sqrt((xx - hx) ** 2 + (yy - hy) ** 2) / (place.scale * size)
    shade = (1.25 - 0.7 * d).clip(0.35, 1.3)[..., None]
    fg = (hsv(rng.uniform(), rng.uniform(0.6, 1.0), 0.8) * shade).clip(0, 1).astype(np.float32)
    return over(bg, fg, coverage(shape, place, size))


RENDITIONS = (_rendition_painting, _rendition_embroidery, _rendition_origami, _rendition_graffiti, _rendition_toy)


def style_r(rng, shape, size):
    """Renditions: paintings, embroidery, origami, graffiti and toys of the same objects."""
    return RENDITIONS[int(rng.integers(len(RENDITIONS)))](rng, shape, size)


def _room(rng, size):
    wall = hsv(rng.uniform(), rng.uniform(0.05, 0.3), rng.uniform(0.45, 0.85))
    floor = hsv(rng.uniform(), rng.uniform(0.1, 0.4), rng.uniform(0.25, 0.6))
    img = flat(size, wall)
    horizon = int(size * rng.uniform(0.55, 0.8))
    img[horizon:] = floor
    for _ in range(int(rng.integers(2, 5))):  # furniture-like boxes
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.15, 0.5, 2) * size
        box = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]])
        color = hsv(rng.uniform(), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.8))
        img = over(img, color, polygon_mask(box, size))
    return img


def style_objectnet(rng, shape, size):
    """Objects at unusual rotations and viewpoints, in cluttered rooms, under dim light."""
    bg = _room(rng, size)
    place = _placement(rng, (0.45, 0.75), 0.0, 0.2, aspect=(0.5, 1.0), shear=0.3, full_rotation=True)
    color = contrasting(rng, bg.mean((0, 1)), lambda: hsv(rng.uniform(), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.85)),
                        min_gap=0.15)
    img = over(bg, color, coverage(shape, place, size))
    cast = hsv(rng.uniform(), 0.15, 1.0)
    img = img * cast * rng.uniform(0.6, 1.0)
    return add_noise(rng, img.astype(np.float32), 0.03)


def _distractor(rng, size):
    n = int(rng.integers(5, 8))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(0.4, 1.0, n) * rng.uniform(0.15, 0.35) * size
    c = rng.uniform(0.1, 0.9, 2) * size
    return np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], axis=1)


def style_a(rng, shape, size):
    """Hard examples: small objects among look-alike clutter, partly occluded, low contrast."""
    bg = blobs(rng, size, 4, (0.2, 0.6), (0.3, 0.8))
    hue = rng.uniform()
    tone = lambda: hsv(hue + rng.normal(0, 0.06), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.9))
    img = bg
    for _ in range(int(rng.integers(2, 6))):
        img = over(img, tone(), polygon_mask(_distractor(rng, size), size))
    place = _placement(rng, (0.36, 0.55), 45.0, 0.45)
    img = over(img, contrasting(rng, img.mean((0, 1)), tone, min_gap=0.18), coverage(shape, place, size))
    # An occluder over part of the object.
    cx = size / 2 * (1 + place.center[0])
    cy = size / 2 * (1 + place.center[1])
    r = place.scale * size / 2
    ox, oy = cx + rng.uniform(-1, 1) * r, cy + rng.uniform(-1, 1) * r
    w, h = rng.uniform(0.3, 0.7, 2) * r
    occluder = np.array([[ox - w, oy - h], [ox + w, oy - h], [ox + w, oy + h], [ox - w, oy + h]])
    img = over(img, hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.9)), polygon_mask(occluder, size))
    return add_noise(rng, img, 0.04)


STYLES: dict[str, Callable[[np.random.Generator, ShapeClass, int], np.ndarray]] = {
    "source": style_source,
    "v2": style_v2,
    "a": style_a,
    "r": style_r,
    "sketch": style_sketch,
    "objectnet": style_objectnet,
    "cartoon": style_cartoon,
    "drawing": style_drawing,
}


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.asarray(img, np.float32).clip(0, 1) * 255.0 + 0.5).astype(np.uint8)
