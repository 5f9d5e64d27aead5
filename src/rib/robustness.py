"""Effective robustness (Taori et al. 2020, "Measuring robustness to natural distribution shifts";
Miller et al. 2021, "Accuracy on the line").

Across many models, accuracy on a shifted dataset (OOD) and on the pretraining domain (ID) lie close
to a line once both are put through the logit (or probit) transform. A model's effective robustness
on the shift is its OOD accuracy minus what that baseline line predicts from its ID accuracy: above
the line, it is more robust than its ID accuracy explains; on it, no more robust than any model.

The line is fit by least squares of transformed OOD accuracy on transformed ID accuracy, over the
baseline models: the grid's pretrained models, and the rows of an optional table of reference models
(published testbeds). Two points make no line to test (any two models lie exactly on the one
through them), so a fit needs at least ``MIN_POINTS``. Accuracies are fractions in [0, 1]; the
reference table, as published, gives percentages.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from .errors import FormatError, MissingFileError, RibError

SCALES = ("logit", "probit")
MIN_POINTS = 3
# 0 and 1 have no logit or probit: accuracies are clipped to [EPS, 1 - EPS] (a model that gets every
# image right or wrong on a small test set still gets a finite point).
EPS = 1e-4
_NORMAL = NormalDist()


class BaselineError(RibError, ValueError):
    """The baseline line cannot be fit (too few models, all with one ID accuracy)."""


def transform(accuracy: float, scale: str = "logit") -> float:
    """The axis value of an accuracy in [0, 1]."""
    if not 0.0 <= accuracy <= 1.0 or math.isnan(accuracy):
        raise ValueError(f"accuracy {accuracy!r} is not a fraction in [0, 1]")
    p = min(max(accuracy, EPS), 1.0 - EPS)
    if scale == "logit":
        return math.log(p / (1.0 - p))
    if scale == "probit":
        return _NORMAL.inv_cdf(p)
    raise ValueError(f"scale {scale!r} is not one of {', '.join(SCALES)}")


def inverse(value: float, scale: str = "logit") -> float:
    """The accuracy at an axis value (the inverse of :func:`transform`)."""
    if scale == "logit":
        return 1.0 / (1.0 + math.exp(-value))
    if scale == "probit":
        return _NORMAL.cdf(value)
    raise ValueError(f"scale {scale!r} is not one of {', '.join(SCALES)}")


@dataclass(frozen=True)
class Line:
    """The baseline of one OOD dataset: transformed OOD = slope * transformed ID + intercept."""

    dataset: str
    scale: str
    slope: float
    intercept: float
    models: tuple[str, ...]  # what it was fit on
    r2: float

    def expected(self, id_accuracy: float) -> float:
        """The OOD accuracy the baseline predicts for a model of this ID accuracy."""
        return inverse(self.slope * transform(id_accuracy, self.scale) + self.intercept, self.scale)

    def effective_robustness(self, id_accuracy: float, ood_accuracy: float) -> float:
        """OOD accuracy above the baseline (a fraction; negative: below it)."""
        return ood_accuracy - self.expected(id_accuracy)

    def describe(self) -> str:
        return (f"{self.scale} fit on {len(self.models)} models ({', '.join(self.models)}): "
                f"slope {self.slope:.3f}, intercept {self.intercept:.3f}, R^2 {self.r2:.3f}")


def fit(points: Mapping[str, tuple[float, float]], dataset: str, scale: str = "logit") -> Line:
    """The least-squares line through ``points`` ({model: (ID accuracy, OOD accuracy)}) on ``scale`` axes."""
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} is not one of {', '.join(SCALES)}")
    if len(points) < MIN_POINTS:
        raise BaselineError(
            f"effective robustness on {dataset!r}: the baseline needs at least {MIN_POINTS} models with ID and "
            f"OOD accuracy, {len(points)} given ({', '.join(points) or 'none'}); add pretrained models to the grid "
            "or a table of reference models")
    names = tuple(points)
    xs = [transform(points[n][0], scale) for n in names]
    ys = [transform(points[n][1], scale) for n in names]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise BaselineError(f"effective robustness on {dataset!r}: the {len(names)} baseline models all have the same "
                            "ID accuracy; a line needs them to differ")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return Line(dataset, scale, slope, intercept, names, r2)


def read_reference(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """A table of reference models: a CSV with a ``model`` column and one column per dataset (the
    grid's names: source, r, sketch ...), top-1 accuracies in percent as published; an empty cell
    is a dataset the model was not evaluated on. Returns {model: {dataset: accuracy as a fraction}}."""
    if not os.path.exists(path):
        raise MissingFileError(f"{path}: no such reference-models table")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "model" not in rows[0]:
        raise FormatError(f"{path}: a reference-models table needs a 'model' column and a column per dataset")
    out: dict[str, dict[str, float]] = {}
    for line, row in enumerate(rows, start=2):
        model = (row.pop("model") or "").strip()
        if not model:
            raise FormatError(f"{path}, line {line}: no model name")
        if model in out:
            raise FormatError(f"{path}, line {line}: model {model!r} is listed twice")
        values = {}
        for dataset, text in row.items():
            if text is None or not text.strip():
                continue
            try:
                value = float(text)
            except ValueError:
                raise FormatError(f"{path}, line {line}, column {dataset!r}: {text!r} is not a number") from None
            if not 0.0 <= value <= 100.0:
                raise FormatError(f"{path}, line {line}, column {dataset!r}: {value} is not a top-1 accuracy in percent")
            values[dataset] = value / 100.0
        out[model] = values
    return out


def baselines(accuracies: Mapping[str, Mapping[str, float]], id_dataset: str, ood_datasets: Sequence[str],
              scale: str = "logit") -> dict[str, Line]:
    """One line per OOD dataset, over every model of ``accuracies`` ({model: {dataset: accuracy}})
    that has both the ID and that dataset's accuracy."""
    lines = {}
    for dataset in ood_datasets:
        points = {m: (acc[id_dataset], acc[dataset]) for m, acc in accuracies.items()
                  if id_dataset in acc and dataset in acc}
        lines[dataset] = fit(points, dataset, scale)
    return lines
