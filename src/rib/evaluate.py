"""Evaluating a checkpoint on prepared datasets: one result record ("cell") per dataset.

For every image the model's logits are projected onto the dataset's classes and scored
(``restricted`` or ``full``, see :mod:`rib.data.labels`). A cell records the accuracy on the whole
dataset and on its held-out part; when the checkpoint was fine-tuned on that very dataset only the
held-out part is reported, so a number on D_ft is never training accuracy. Datasets with groups
(ImageNet-C's corruption/severity folders) get per-group accuracies, and their headline accuracy
is the mean over corruptions of the mean over severities.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import torch
from torch import nn

from .data.labels import LabelProjection
from .data.loading import batches, normalize, open_dataset
from .data.manifest import PreparedDataset, Row
from .metrics import corruption_accuracy
from .models.registry import Preprocessing
from .progress import progress
from .train import autocast

log = logging.getLogger("rib.evaluate")


@torch.inference_mode()
def predict(model: nn.Module, prepared: PreparedDataset, label_space: list[str], prep: Preprocessing, *,
            scoring: str, batch_size: int, device: torch.device, precision: str = "auto", workers: int = 0,
            preload: bool = True, show_progress: bool = True, loaded: dict | None = None,
            part: str | None = None) -> torch.Tensor:
    """Per-row correctness (bool tensor in manifest order) of ``model`` on the images of a dataset
    (``part``: only that part). ``loaded`` keeps decoded datasets for the next call (several models
    evaluated on the same data)."""
    key = (prepared.name, part, prep)
    data = loaded.get(key) if loaded is not None else None
    if data is None:
        data = open_dataset(prepared, part, prep, preload_images=preload, show_progress=show_progress)
        if loaded is not None:
            loaded[key] = data
    projection = LabelProjection(prepared.classes, label_space).to(device)
    model.eval().to(device)
    out = []
    order = torch.arange(len(data))
    total = (len(data) + batch_size - 1) // batch_size
    for images, labels in progress(batches(data, order, batch_size, workers, pin_memory=device.type == "cuda"),
                                   desc=f"evaluate {prepared.name}", unit="batch", total=total,
                                   enabled=show_progress, leave=False):
        with autocast(device, precision):
            logits = model(normalize(images, prep, device))
        out.append(projection.correct(logits.float(), labels.to(device), scoring).cpu())
    return torch.cat(out)


def _stats(correct: int, n: int) -> dict:
    return {"n": n, "correct": correct, "top1": correct / n if n else float("nan")}


def summarize(rows: list[Row], correct: list[bool]) -> dict:
    """Accuracy of a set of rows; grouped rows (ImageNet-C) also get per-group and per-corruption scores."""
    n, c = len(rows), int(sum(correct))
    result = _stats(c, n)
    if rows and rows[0].group:
        per_group: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for row, ok in zip(rows, correct):
            per_group[row.group][0] += int(ok)
            per_group[row.group][1] += 1
        groups = {g: _stats(k, m) for g, (k, m) in sorted(per_group.items())}
        per_corruption, top1 = corruption_accuracy({g: s["top1"] for g, s in groups.items()})
        result.update(pooled_top1=result["top1"], top1=top1, per_corruption=per_corruption, groups=groups)
    return result


def cell_record(prepared: PreparedDataset, correct: torch.Tensor, finetuned_on: str | None) -> dict:
    """The accuracy part of one cell: subsets ``all`` and ``heldout``, and the headline ``top1``."""
    flags = correct.tolist()
    rows = list(prepared.rows)
    subsets = {}
    own = finetuned_on == prepared.name
    if not own:
        subsets["all"] = summarize(rows, flags)
    held = [(r, f) for r, f in zip(rows, flags) if r.part == "heldout"]
    if held:
        subsets["heldout"] = summarize([r for r, _ in held], [f for _, f in held])
    if own and "heldout" not in subsets:
        raise ValueError(f"dataset {prepared.name!r} has no held-out part to evaluate the model fine-tuned on it")
    subset = "heldout" if own else "all"
    return {"eval_dataset": prepared.name, "subset": subset, "top1": subsets[subset]["top1"],
            "n": subsets[subset]["n"], "subsets": subsets}


def evaluate_checkpoint(model: nn.Module, label_space: list[str], prep: Preprocessing,
                        datasets: list[PreparedDataset], *, finetuned_on: str | None, scoring: str,
                        batch_size: int, device: torch.device, precision: str, workers: int, preload: bool,
                        show_progress: bool = True, loaded: dict | None = None) -> list[dict]:
    records = []
    for prepared in datasets:
        t0 = time.time()
        correct = predict(model, prepared, label_space, prep, scoring=scoring, batch_size=batch_size,
                          device=device, precision=precision, workers=workers, preload=preload,
                          show_progress=show_progress, loaded=loaded)
        rec = cell_record(prepared, correct, finetuned_on)
        rec["seconds"] = round(time.time() - t0, 3)
        log.info("%s: top-1 %.4f on %s (%d images, %.1fs)", prepared.name, rec["top1"], rec["subset"], rec["n"],
                 rec["seconds"])
        records.append(rec)
    return records
