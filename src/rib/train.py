"""The training loop shared by pretraining (rib-mini) and fine-tuning, with exact resume.

* Schedule: SGD with momentum, linear warm-up over ``warmup_steps`` then cosine decay to zero.
* Order: epoch ``e`` visits the data in a permutation drawn from a generator seeded by
  (seed, e), and training uses the model's eval transform (no random augmentation), so an epoch
  is a pure function of the weights at its start.
* Resume: after every epoch the full training state (weights, optimiser, step, method state,
  history) is written atomically to ``state_path``. A restarted run with the same fingerprint
  continues after the last finished epoch and ends with the same weights as an unbroken run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .data.labels import LabelProjection
from .data.loading import ImageDataset, InMemoryDataset, batches, normalize
from .errors import TrainingStopped
from .io import atomic_path
from .methods.base import Method, TrainContext
from .models.registry import Preprocessing
from .progress import progress

log = logging.getLogger("rib.train")


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_steps: int
    precision: str = "auto"
    optimizer: str = "sgd"  # sgd (with momentum) | adamw (momentum is then beta1)

    @classmethod
    def from_config(cls, cfg: dict) -> Schedule:
        return cls(**{k: cfg[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_steps")},
                   precision=cfg.get("precision", "auto"), optimizer=cfg.get("optimizer", "sgd"))

    def make_optimizer(self, params: list) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, betas=(self.momentum, 0.999), weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {self.optimizer!r}; expected 'sgd' or 'adamw'")


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress_ = min(max(step - warmup, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress_))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def fingerprint(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _load_state(state_path: Path, expected: str) -> dict | None:
    if not state_path.exists():
        return None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged state file is not trusted; training restarts
        log.warning("%s: unreadable training state (%s); starting from the beginning", state_path, err)
        return None
    if state.get("fingerprint") != expected:
        log.warning("%s: training state is from other settings; starting from the beginning", state_path)
        return None
    return state


def fit(model: nn.Module, method: Method, data: ImageDataset | InMemoryDataset, projection: LabelProjection,
        prep: Preprocessing, schedule: Schedule, *, seed: int, device: torch.device, state_path: str | os.PathLike,
        run_fingerprint: str, workers: int = 0, desc: str = "train", show_progress: bool = True,
        stop_after_epoch: int | None = None, reference=None) -> tuple[list[dict], nn.Module, dict | None]:
    """Train ``model`` with ``method``; returns (per-epoch history, the model to save, its wrapper).

    ``reference(samples, seed)`` loads pretraining-domain images for methods that need them.
    ``stop_after_epoch`` ends the run after that epoch as if the job had been killed (for tests and
    preemption drills); calling ``fit`` again resumes.
    """
    state_path = Path(state_path)
    model.to(device)
    projection = projection.to(device)
    ctx = TrainContext(device=device, seed=seed, projection=projection, prep=prep, reference=reference,
                       normalize=normalize)
    module = method.setup(model, ctx)
    params = method.trainable_parameters(module)
    if not params:
        raise ValueError(f"method {method.name!r} left no trainable parameters")
    optimizer = schedule.make_optimizer(params)
    n = len(data)
    if n < 2:
        raise ValueError(f"{desc}: {n} training image(s); at least 2 are needed")
    # A final batch of a single image is dropped: batch normalisation cannot train on one sample.
    used = n - 1 if n % schedule.batch_size == 1 else n
    steps_per_epoch = math.ceil(used / schedule.batch_size)
    total_steps = steps_per_epoch * schedule.epochs
    run_fp = fingerprint(run=run_fingerprint, schedule=asdict(schedule), method=method.config, n=n)

    start_epoch, step, history = 0, 0, []
    state = _load_state(state_path, run_fp)
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        log.info("resuming %s after epoch %d of %d (step %d)", desc, start_epoch, schedule.epochs, step)
    method.start(module, ctx)

    for epoch in range(start_epoch, schedule.epochs):
        t0 = time.time()
        method.train_mode(module)
        order = epoch_order(n, seed, epoch)[:used]
        loss_sum, correct, seen = 0.0, 0, 0
        bar = progress(batches(data, order, schedule.batch_size, workers, pin_memory=device.type == "cuda"),
                       desc=f"{desc} epoch {epoch + 1}/{schedule.epochs}", unit="batch", total=steps_per_epoch,
                       enabled=show_progress, leave=False)
        for images, labels in bar:
            factor = lr_factor(step, schedule.warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr * factor
            x = normalize(images, prep, device)
            y = labels.to(device)
            with autocast(device, schedule.precision):
                logits = projection.restrict(module(x)).float()
                loss = method.loss(module, x, logits, y, ctx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_top1": correct / seen,
                  "lr": schedule.lr * lr_factor(step - 1, schedule.warmup_steps, total_steps),
                  "seconds": round(time.time() - t0, 3)}
        history.append(record)
        log.info("%s epoch %d/%d: loss %.4f, train top-1 %.3f, %.1fs", desc, epoch + 1, schedule.epochs,
                 record["loss"], record["train_top1"], record["seconds"])
        with atomic_path(state_path) as tmp:
            torch.save({"fingerprint": run_fp, "epoch": epoch + 1, "step": step, "history": history,
                        "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                        "method": method.state_dict()}, tmp)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < schedule.epochs:
            raise TrainingStopped(f"stopped after epoch {epoch + 1} as asked; run again to resume")
    final, wrapper = method.finalize(module)
    return history, final, wrapper
