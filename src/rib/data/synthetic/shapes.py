"""The object classes of the synthetic suite: shapes whose identity is their outline.

Each class is a set of closed rings in unit coordinates (the object fits in the unit disk,
y pointing down as in images). A ring is either solid or a hole. Every rendering style of the
suite (photo-like fill, sketch strokes, cartoon, pencil hatching, ...) is derived from the same
rings, so a change of style never changes what the object is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ring:
    points: np.ndarray  # (N, 2) float, closed implicitly
    hole: bool = False


@dataclass(frozen=True)
class ShapeClass:
    wnid: str  # a WordNet-like identifier, used as the class folder name
    name: str  # a real English word, usable in prompts
    rings: tuple[Ring, ...]


def _circle(radius: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2.0 * np.pi / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.42) -> np.ndarray:
    t = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _poly(*xy: float) -> np.ndarray:
    return np.asarray(xy, dtype=float).reshape(-1, 2)


def _heart(n: int = 60) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max()


def _crescent(n: int = 48) -> np.ndarray:
    # Outer arc of the unit circle outside a second circle shifted right, closed by the inner arc.
    big = 1.0
    small, shift = 0.8, 0.45
    # Intersection angles of the two circles.
    x_int = (big**2 - small**2 + shift**2) / (2 * shift)
    y_int = np.sqrt(max(big**2 - x_int**2, 1e-9))
    a_big = np.arctan2(y_int, x_int)
    outer_t = np.linspace(a_big, 2 * np.pi - a_big, n)
    outer = np.stack([big * np.cos(outer_t), big * np.sin(outer_t)], axis=1)
    a_small = np.arctan2(y_int, x_int - shift)
    inner_t = np.linspace(2 * np.pi - a_small, a_small, n // 2)
    inner = np.stack([shift + small * np.cos(inner_t), small * np.sin(inner_t)], axis=1)
    pts = np.concatenate([outer, inner])
    pts[:, 0] -= (pts[:, 0].max() + pts[:, 0].min()) / 2
    return pts


def _solid(*rings: np.ndarray) -> tuple[Ring, ...]:
    return tuple(Ring(r) for r in rings)


# Order matters: the first `num_classes` entries form a suite's label space.
SHAPES: tuple[ShapeClass, ...] = (
    ShapeClass("n99000001", "circle", _solid(_circle())),
    ShapeClass("n99000002", "square", _solid(_regular(4, 1.0, np.pi / 4) * 0.95)),
    ShapeClass("n99000003", "triangle", _solid(_regular(3, 1.0) + np.array([0.0, 0.2]))),
    ShapeClass("n99000004", "star", _solid(_star())),
    ShapeClass("n99000005", "cross", _solid(_poly(-0.3, -1, 0.3, -1, 0.3, -0.3, 1, -0.3, 1, 0.3, 0.3, 0.3,
                                                  0.3, 1, -0.3, 1, -0.3, 0.3, -1, 0.3, -1, -0.3, -0.3, -0.3))),
    ShapeClass("n99000006", "ring", (Ring(_circle()), Ring(_circle(0.55), hole=True))),
    ShapeClass("n99000007", "crescent", _solid(_crescent())),
    ShapeClass("n99000008", "arrow", _solid(_poly(-1, -0.25, 0.2, -0.25, 0.2, -0.65, 1, 0, 0.2, 0.65,
                                                  0.2, 0.25, -1, 0.25))),
    ShapeClass("n99000009", "heart", _solid(_heart())),
    ShapeClass("n99000010", "letter L", _solid(_poly(-0.7, -1, -0.2, -1, -0.2, 0.5, 0.8, 0.5, 0.8, 1, -0.7, 1))),
    ShapeClass("n99000011", "hexagon", _solid(_regular(6, 1.0, 0.0))),
    ShapeClass("n99000012", "letter H", _solid(_poly(-0.9, -1, -0.45, -1, -0.45, -0.22, 0.45, -0.22, 0.45, -1,
                                                     0.9, -1, 0.9, 1, 0.45, 1, 0.45, 0.22, -0.45, 0.22,
                                                     -0.45, 1, -0.9, 1))),
    ShapeClass("n99000013", "lightning bolt", _solid(_poly(0.2, -1, -0.65, 0.15, -0.05, 0.15, -0.35, 1,
                                                           0.7, -0.25, 0.08, -0.25, 0.45, -1))),
    ShapeClass("n99000014", "house", _solid(_poly(0, -1, 0.9, -0.2, 0.65, -0.2, 0.65, 0.9, -0.65, 0.9,
                                                  -0.65, -0.2, -0.9, -0.2))),
    ShapeClass("n99000015", "hourglass", _solid(_poly(-0.8, -1, 0.8, -1, 0.12, 0, 0.8, 1, -0.8, 1, -0.12, 0))),
    ShapeClass("n99000016", "square frame", (Ring(_regular(4, 1.0, np.pi / 4) * 0.95),
                                             Ring(_regular(4, 1.0, np.pi / 4) * 0.5, hole=True))),
)

MAX_CLASSES = len(SHAPES)


def shape_classes(num_classes: int) -> tuple[ShapeClass, ...]:
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be between 2 and {MAX_CLASSES}, got {num_classes}")
    return SHAPES[:num_classes]
