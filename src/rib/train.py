"""The training loop shared by pretraining (rib-mini) and fine-tuning, with exact resume.

* Schedule: SGD with momentum, linear warm-up over ``warmup_steps`` then cosine decay to zero.
* Precision: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``bf16``, ``fp32``, or ``fp16``
  autocast with a dynamic loss scale (the reference code's AMP with a GradScaler).
* Order: epoch ``e`` visits the data in a permutation drawn from a generator seeded by
  (seed, e), and training uses the model's eval transform (no random augmentation), so an epoch
  is a pure function of the weights at its start.
* Resume: after every epoch the full training state (weights, optimiser, step, method state,
  history) is written atomically to ``state_path``. A restarted run with the same fingerprint
  continues after the last finished epoch and ends with the same weights as an unbroken run.
* Preemption: SIGTERM or SIGUSR1 (what SLURM sends on preemption, requeue and at the time limit)
  saves the state after the step in progress, mid-epoch included (with the generator state and the
  epoch's running sums), and stops; the requeued or retried job resumes from that step exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .data.labels import LabelProjection
from .data.loading import EpochBatches, ImageDataset, InMemoryDataset, batches, normalize
from .errors import TrainingInterrupted, TrainingStopped
from .methods.base import Method, TrainContext
from .models import network
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
    """bf16 autocast for ``bf16`` (and ``auto`` on CUDA), fp16 for ``fp16`` (the reference code's AMP),
    else nothing (fp32)."""
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 needs its loss scaled (the reference code's GradScaler); bf16 and fp32 do not (disabled)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


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
    if not isinstance(state, dict):
        log.warning("%s: not a training state; starting from the beginning", state_path)
        return None
    if not network.digest_matches(state):
        log.warning("%s: training state does not match its recorded digest (damaged); starting from the beginning",
                    state_path)
        return None
    if state.get("fingerprint") != expected:
        log.warning("%s: training state is from other settings; starting from the beginning", state_path)
        return None
    return state


STOP_SIGNALS = ("SIGTERM", "SIGUSR1")  # SLURM: preemption, time limit, requeue; --signal=USR1@T warnings


class StopRequest:
    """Remembers the first stop signal; the training loop saves and stops at the next step boundary."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("received %s: saving the training state after the current step, then stopping",
                        signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self):
        """Catch the stop signals while training (main thread only; elsewhere signals stay as they are)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {}
        try:
            for name in STOP_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    previous[sig] = signal.signal(sig, self)
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict | None, device: torch.device) -> None:
    if not state:
        return
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _job_identity() -> dict:
    """Where an interrupted run was running: its SLURM job, when there is one."""
    ident = {"host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for key, env in (("slurm_job_id", "SLURM_JOB_ID"), ("slurm_restart_count", "SLURM_RESTART_COUNT")):
        if os.environ.get(env):
            ident[key] = os.environ[env]
    return ident


@torch.inference_mode()
def _features(module: nn.Module, data, prep: Preprocessing, device: torch.device, precision: str, desc: str,
              show_progress: bool) -> torch.Tensor:
    """Pre-logit features of every training image (in data order), in eval mode, on ``device``."""
    module.eval()
    out = []
    order = torch.arange(len(data))
    for images, _ in progress(batches(data, order, 256), desc=f"{desc} features", unit="batch",
                              total=math.ceil(len(data) / 256), enabled=show_progress, leave=False):
        with autocast(device, precision):
            out.append(network.pre_logits(module, normalize(images, prep, device)).float())
    return torch.cat(out)


def fit(model: nn.Module, method: Method, data: ImageDataset | InMemoryDataset, projection: LabelProjection,
        prep: Preprocessing, schedule: Schedule, *, seed: int, device: torch.device, state_path: str | os.PathLike,
        run_fingerprint: str, workers: int = 0, desc: str = "train", show_progress: bool = True,
        stop_after_epoch: int | None = None, reference=None, interruptions: list | None = None,
        on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> tuple[list[dict], nn.Module, dict | None]:
    """Train ``model`` with ``method``; returns (per-epoch history, the model to save, its wrapper).

    ``reference(samples, seed)`` loads pretraining-domain images for methods that need them.
    ``stop_after_epoch`` ends the run after that epoch as if the job had been killed (for tests and
    preemption drills); calling ``fit`` again resumes.

    SIGTERM or SIGUSR1 (SLURM's preemption, requeue and time-limit signals) makes the run save its
    full state after the step in progress, mid-epoch included, and raise TrainingInterrupted; calling
    ``fit`` again continues from that step and ends with the same weights as an unbroken run. Each
    such stop is appended to ``interruptions`` (the list is carried in the resume state).

    ``on_epoch_end(epoch, module)`` is called after each finished epoch (1-based), before its state is
    saved: a run resumed after that epoch does not call it again (pretraining's snapshots).
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
    scaler = grad_scaler(device, schedule.precision)
    n = len(data)
    if n < 2:
        raise ValueError(f"{desc}: {n} training image(s); at least 2 are needed")
    # A final batch of a single image is dropped: batch normalisation cannot train on one sample.
    used = n - 1 if n % schedule.batch_size == 1 else n
    steps_per_epoch = math.ceil(used / schedule.batch_size)
    total_steps = steps_per_epoch * schedule.epochs
    on_features = method.head_on_features and hasattr(module, "forward_features")
    run_fp = fingerprint(run=run_fingerprint, schedule=asdict(schedule), method=method.config, n=n,
                         features=on_features)

    start_epoch, start_batch, step, history, partial, stops = 0, 0, 0, [], None, []
    state = _load_state(state_path, run_fp)
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        method.load_state_dict(state["method"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        start_batch, partial, stops = state.get("batch", 0), state.get("partial"), state.get("interruptions", [])
        log.info("resuming %s at epoch %d of %d, batch %d of %d (step %d)%s", desc, start_epoch + 1,
                 schedule.epochs, start_batch, steps_per_epoch, step,
                 f"; interrupted {len(stops)} time(s) before" if stops else "")
    method.start(module, ctx)
    if state is not None:
        _set_rng_state(state.get("rng"), device)  # after start(): it may draw from the generator itself
    if interruptions is not None:
        interruptions[:] = stops

    def save(epoch: int, batch: int, partial_stats: dict | None) -> None:
        state = {"fingerprint": run_fp, "epoch": epoch, "batch": batch, "step": step, "history": history,
                 "partial": partial_stats, "rng": _rng_state(device), "interruptions": stops,
                 "model": module.state_dict(), "optimizer": optimizer.state_dict(), "method": method.state_dict(),
                 "scaler": scaler.state_dict()}
        network.write_torch(state_path, state, what="training state")

    if on_features:  # LP: the frozen backbone's features once, then the head alone trains on them
        features = _features(module, data, prep, device, schedule.precision, desc, show_progress)
        classifier = network.head(module)
        labels_all = data.labels

    images_in = None if on_features else EpochBatches(data, schedule.batch_size, workers,
                                                      pin_memory=device.type == "cuda")

    def epoch_batches(order):
        if not on_features:
            yield from images_in(order)
            return
        for start in range(0, len(order), schedule.batch_size):
            idx = order[start:start + schedule.batch_size]
            yield features[idx], labels_all[idx]

    request = StopRequest()
    with request.installed():
        for epoch in range(start_epoch, schedule.epochs):
            t0 = time.time()
            method.train_mode(module)
            first = start_batch if epoch == start_epoch else 0
            order = epoch_order(n, seed, epoch)[:used][first * schedule.batch_size:]
            stats = dict(partial) if (partial and epoch == start_epoch and first) else \
                {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            done = first
            bar = progress(epoch_batches(order), desc=f"{desc} epoch {epoch + 1}/{schedule.epochs}", unit="batch",
                           total=steps_per_epoch - first, enabled=show_progress, leave=False)
            try:
                for images, labels in bar:
                    factor = lr_factor(step, schedule.warmup_steps, total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = schedule.lr * factor
                    x = images.to(device) if on_features else normalize(images, prep, device)
                    y = labels.to(device)
                    with autocast(device, schedule.precision):
                        logits = projection.restrict(classifier(x) if on_features else module(x)).float()
                        loss = method.loss(module, x, logits, y, ctx)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)  # skipped where fp16 gradients overflowed
                    scaler.update()
                    step += 1
                    done += 1
                    stats["loss_sum"] += float(loss.detach()) * len(y)
                    stats["correct"] += int((logits.argmax(1) == y).sum())
                    stats["seen"] += len(y)
                    if request.signum is not None and done < steps_per_epoch:
                        break
            except Exception:
                # A signal can also end the batch iterator (a DataLoader worker killed with the job
                # step); every finished step is consistent, so save them before giving up.
                if request.signum is None:
                    raise
            if done < steps_per_epoch:  # stopped mid-epoch by a signal
                stats["seconds"] += time.time() - t0
                stops.append({"signal": signal.Signals(request.signum).name, "epoch": epoch + 1, "batch": done,
                              "step": step, **_job_identity()})
                save(epoch, done, stats)
                raise TrainingInterrupted(
                    f"{desc}: stopped by {signal.Signals(request.signum).name} in epoch {epoch + 1} after batch "
                    f"{done} of {steps_per_epoch}; the state is saved in {state_path}, run the same command "
                    "again to resume", request.signum)
            seen = stats["seen"]
            record = {"epoch": epoch + 1, "loss": stats["loss_sum"] / seen, "train_top1": stats["correct"] / seen,
                      "lr": schedule.lr * lr_factor(step - 1, schedule.warmup_steps, total_steps),
                      "seconds": round(stats["seconds"] + time.time() - t0, 3)}
            history.append(record)
            log.info("%s epoch %d/%d: loss %.4f, train top-1 %.3f, %.1fs", desc, epoch + 1, schedule.epochs,
                     record["loss"], record["train_top1"], record["seconds"])
            last = epoch + 1 >= schedule.epochs
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, module)
            save(epoch + 1, 0, None)
            if request.signum is not None and not last:  # the signal came during the epoch or the save
                stops.append({"signal": signal.Signals(request.signum).name, "epoch": epoch + 2, "batch": 0,
                              "step": step, **_job_identity()})
                save(epoch + 1, 0, None)
                raise TrainingInterrupted(
                    f"{desc}: stopped by {signal.Signals(request.signum).name} after epoch {epoch + 1}; the "
                    f"state is saved in {state_path}, run the same command again to resume", request.signum)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and not last:
                raise TrainingStopped(f"stopped after epoch {epoch + 1} as asked; run again to resume")
    if interruptions is not None:
        interruptions[:] = stops
    final, wrapper = method.finalize(module)
    return history, final, wrapper
