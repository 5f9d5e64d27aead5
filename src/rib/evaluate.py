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

from .data.cache import find as find_cache
from .data.labels import LabelProjection
from .data.loading import batches, normalize, open_dataset
from .data.manifest import PreparedDataset, Row
from .errors import memory_error, out_of_memory
from .metrics import corruption_accuracy
from .models.registry import Preprocessing
from .progress import progress
from .train import autocast

log = logging.getLogger("rib.evaluate")


AUTO_BATCH = {"cuda": 512, "cpu": 64}  # evaluate.batch_size: auto starts here (CPU: fastest measured)
_FITTED: dict[tuple, int] = {}  # auto batch sizes that fitted, per (device, model class, input size)


def _engine_model(model: nn.Module, device: torch.device, engine: dict) -> tuple[nn.Module, bool]:
    """The module to run and whether inputs go channels-last: channels_last (auto: CUDA and a
    convolutional model) and torch.compile (CUDA only) from the runtime settings."""
    model.eval().to(device)
    cl = engine.get("channels_last", "auto")
    channels_last = cl is True or (cl == "auto" and device.type == "cuda"
                                   and any(isinstance(m, nn.Conv2d) for m in model.modules()))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if engine.get("compile") and device.type == "cuda":
        compiled = getattr(model, "_rib_compiled", None)
        if compiled is None:  # once per model object (weight-space methods reload weights into it)
            compiled = torch.compile(model)
            object.__setattr__(model, "_rib_compiled", compiled)
        return compiled, channels_last
    return model, channels_last


@torch.inference_mode()
def predict(model: nn.Module, prepared: PreparedDataset, label_space: list[str], prep: Preprocessing, *,
            scoring: str, batch_size: int | str, device: torch.device, precision: str = "auto", workers: int = 0,
            preload: bool = True, show_progress: bool = True, loaded: dict | None = None,
            part: str | None = None, caches: list | None = None, engine: dict | None = None) -> torch.Tensor:
    """Per-row correctness (bool tensor in manifest order) of ``model`` on the images of a dataset
    (``part``: only that part). ``loaded`` keeps decoded datasets for the next call (several models
    evaluated on the same data); ``caches``: preprocessed-image cache folders to read from;
    ``engine``: channels_last / compile settings (runtime section).

    ``batch_size`` "auto" starts at AUTO_BATCH and halves on running out of GPU memory; a fixed
    batch size that does not fit is a RibError naming the setting."""
    key = (prepared.name, part, prep)
    data = loaded.get(key) if loaded is not None else None
    if data is None:
        decode = device if (engine or {}).get("gpu_decode") else None
        data = open_dataset(prepared, part, prep, preload_images=preload, show_progress=show_progress,
                            cache=find_cache(caches, prepared, prep), decode_device=decode)
        if loaded is not None:
            loaded[key] = data
    projection = LabelProjection(prepared.classes, label_space).to(device)
    run, channels_last = _engine_model(model, device, engine or {})
    auto = batch_size == "auto"
    fitted = (device.type, type(model).__name__, prep.input_size)
    size = _FITTED.get(fitted, AUTO_BATCH.get(device.type, 64)) if auto else int(batch_size)
    while True:
        try:
            out = []
            order = torch.arange(len(data))
            for images, labels in progress(batches(data, order, size, workers, pin_memory=device.type == "cuda"),
                                           desc=f"evaluate {prepared.name}", unit="batch",
                                           total=(len(data) + size - 1) // size, enabled=show_progress, leave=False):
                x = normalize(images, prep, device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, precision):
                    logits = run(x)
                out.append(projection.correct(logits.float(), labels.to(device), scoring).cpu())
            if auto:
                _FITTED[fitted] = size  # the next dataset starts at the size that fitted
            return torch.cat(out)
        except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
            kind = out_of_memory(err)
            if kind is None:
                raise
            if not auto or size == 1:
                raise memory_error(kind, err, f"evaluating on {prepared.name} at batch size {size}",
                                   "lower evaluate.batch_size in the params file, or set it to auto") from None
            size //= 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("out of %s memory; evaluation batch size lowered to %d", kind, size)


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
                        show_progress: bool = True, loaded: dict | None = None, caches: list | None = None,
                        engine: dict | None = None) -> list[dict]:
    records = []
    for prepared in datasets:
        t0 = time.time()
        correct = predict(model, prepared, label_space, prep, scoring=scoring, batch_size=batch_size,
                          device=device, precision=precision, workers=workers, preload=preload,
                          show_progress=show_progress, loaded=loaded, caches=caches, engine=engine)
        rec = cell_record(prepared, correct, finetuned_on)
        rec["seconds"] = round(time.time() - t0, 3)
        log.info("%s: top-1 %.4f on %s (%d images, %.1fs)", prepared.name, rec["top1"], rec["subset"], rec["n"],
                 rec["seconds"])
        records.append(rec)
    return records
