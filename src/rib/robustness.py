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


# ----------------------------------------------------------------------------------------------
# The grid's tables (rib aggregate)
# ----------------------------------------------------------------------------------------------
KINDS = ("pretrained", "snapshot", "reference")  # baseline points: the grid's models, their snapshots, a table's


def baseline_points(pretrained: Mapping[str, Mapping[str, float]], snapshots: Sequence[Mapping],
                    reference: Mapping[str, Mapping[str, float]] | None = None) -> list[dict]:
    """Every baseline model as {label, kind, model, epoch, accuracy: {dataset: fraction}}:
    ``pretrained`` {model: {dataset: top-1}}; ``snapshots``: the records of ``rib
    evaluate-snapshots``; ``reference``: :func:`read_reference`'s table."""
    points = [{"label": m, "kind": "pretrained", "model": m, "epoch": None, "accuracy": dict(acc)}
              for m, acc in pretrained.items()]
    for rec in snapshots:
        for snap in rec["snapshots"]:
            points.append({"label": f"{rec['model']} @ epoch {snap['epoch']}/{snap['epochs']}", "kind": "snapshot",
                           "model": rec["model"], "epoch": snap["epoch"], "accuracy": dict(snap["top1"])})
    for name, acc in (reference or {}).items():
        label = name if name not in {p["label"] for p in points} else f"{name} (reference)"
        points.append({"label": label, "kind": "reference", "model": name, "epoch": None, "accuracy": dict(acc)})
    return points


def fit_lines(points: Sequence[Mapping], id_dataset: str, ood_datasets: Sequence[str],
              scale: str = "logit") -> dict[str, Line | BaselineError]:
    """One line per OOD dataset over the points that have both accuracies; where none can be fit,
    the error saying why (the tables and the figure say it instead of a number)."""
    out: dict[str, Line | BaselineError] = {}
    for dataset in ood_datasets:
        chosen = {p["label"]: (p["accuracy"][id_dataset], p["accuracy"][dataset]) for p in points
                  if id_dataset in p["accuracy"] and dataset in p["accuracy"]}
        try:
            out[dataset] = fit(chosen, dataset, scale)
        except BaselineError as err:
            out[dataset] = err
    return out


def fit_description(points: Sequence[Mapping]) -> str:
    """What the lines were fit on, in words (the figure's and the tables' captions)."""
    kinds = {k: [p for p in points if p["kind"] == k] for k in KINDS}
    parts = []
    if kinds["pretrained"]:
        parts.append(f"{len(kinds['pretrained'])} pretrained model(s) of the grid")
    if kinds["snapshot"]:
        models = sorted({p["model"] for p in kinds["snapshot"]})
        parts.append(f"{len(kinds['snapshot'])} intermediate pretraining snapshot(s) of {', '.join(models)}")
    if kinds["reference"]:
        parts.append(f"{len(kinds['reference'])} reference model(s)")
    return " + ".join(parts) or "no models"


def tables(cells, points: Sequence[Mapping], id_dataset: str, ood_datasets: Sequence[str],
           scale: str = "logit") -> dict:
    """Effective robustness of every fine-tuned cell before and after, in points (percent):

    * ``robustness_cells``: one row per (model, method, D_ft, evaluation dataset): ID (``id_*``,
      the pretraining domain) and OOD (``ood_*``) accuracy before and after fine-tuning, the OOD
      accuracy the baseline predicts from each ID accuracy, and effective robustness (``er_*``) with
      its change. D_ft's own row (role ``finetune``) uses its held-out part.
    * ``robustness``: per (model, method, D_ft), the mean over the OOD datasets (D minus D_ft).
    * ``baseline``: the baseline points, accuracy in percent per dataset; ``baseline_lines``: one
      line per OOD dataset (slope, intercept, R^2, what it was fit on), or why there is none.
    """
    import pandas as pd

    lines = fit_lines(points, id_dataset, ood_datasets, scale)
    pre = cells[cells.method == "pretrained"].set_index(["model", "eval_dataset"])
    ft = cells[(cells.method != "pretrained")].set_index(["model", "method", "finetune_dataset", "eval_dataset"])
    rows = []
    for r in cells[(cells.method != "pretrained") & (cells.eval_dataset != id_dataset)].itertuples(index=False):
        line = lines.get(r.eval_dataset)
        own = r.role == "finetune"
        p = pre.loc[(r.model, r.eval_dataset)]
        id_pre = pre.loc[(r.model, id_dataset)].top1
        id_ft = ft.loc[(r.model, r.method, r.finetune_dataset, id_dataset)].top1
        ood_pre = p.heldout_top1 if own else p.top1
        ood_ft = r.heldout_top1 if own else r.top1
        row = {"model": r.model, "method": r.method, "finetune_dataset": r.finetune_dataset,
               "eval_dataset": r.eval_dataset, "role": r.role, "id_pre": 100 * id_pre, "ood_pre": 100 * ood_pre,
               "id_ft": 100 * id_ft, "ood_ft": 100 * ood_ft}
        if isinstance(line, Line):
            row.update(expected_pre=100 * line.expected(id_pre), expected_ft=100 * line.expected(id_ft),
                       er_pre=100 * line.effective_robustness(id_pre, ood_pre),
                       er_ft=100 * line.effective_robustness(id_ft, ood_ft))
            row["er_change"] = row["er_ft"] - row["er_pre"]
        else:
            row.update(expected_pre=math.nan, expected_ft=math.nan, er_pre=math.nan, er_ft=math.nan,
                       er_change=math.nan)
        rows.append(row)
    cell_table = pd.DataFrame(rows, columns=["model", "method", "finetune_dataset", "eval_dataset", "role", "id_pre",
                                             "ood_pre", "id_ft", "ood_ft", "expected_pre", "expected_ft", "er_pre",
                                             "er_ft", "er_change"])
    summary = []
    for (model, method, dft), g in cell_table.groupby(["model", "method", "finetune_dataset"], sort=False):
        ood = g[(g.role == "ood") & g.er_pre.notna()]
        summary.append({"model": model, "method": method, "finetune_dataset": dft, "id_pre": g.id_pre.iloc[0],
                        "id_ft": g.id_ft.iloc[0], "er_pre": ood.er_pre.mean(), "er_ft": ood.er_ft.mean(),
                        "er_change": ood.er_change.mean(), "n_ood": len(ood)})  # NaN where no dataset has a line
    datasets = [id_dataset, *ood_datasets]
    baseline = pd.DataFrame([{"label": p["label"], "kind": p["kind"], "model": p["model"], "epoch": p["epoch"],
                              **{d: 100 * p["accuracy"][d] if d in p["accuracy"] else math.nan for d in datasets}}
                             for p in points], columns=["label", "kind", "model", "epoch", *datasets])
    baseline["epoch"] = baseline["epoch"].astype("Int64")
    line_rows = []
    for dataset, line in lines.items():
        if isinstance(line, Line):
            line_rows.append({"eval_dataset": dataset, "scale": line.scale, "slope": line.slope,
                              "intercept": line.intercept, "r2": line.r2, "n_points": len(line.models),
                              "fit_on": "; ".join(line.models), "note": ""})
        else:
            line_rows.append({"eval_dataset": dataset, "scale": scale, "slope": math.nan, "intercept": math.nan,
                              "r2": math.nan, "n_points": 0, "fit_on": "", "note": str(line)})
    return {"robustness_cells": cell_table,
            "robustness": pd.DataFrame(summary, columns=["model", "method", "finetune_dataset", "id_pre", "id_ft",
                                                         "er_pre", "er_ft", "er_change", "n_ood"]),
            "baseline": baseline, "baseline_lines": pd.DataFrame(line_rows)}
