"""Loading prepared datasets as uint8 image batches in a model's own preprocessing.

Images are decoded, resized and centre-cropped as the model's preprocessing says, and kept as
uint8 (C, H, W). Conversion to float and normalisation happen per batch on the compute device
(:func:`normalize`). Small datasets can be decoded once into memory (``runtime.preload``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models.registry import Preprocessing
from ..progress import progress
from .manifest import DataError, PreparedDataset, Row

# PIL's filters, as timm's eval transform uses them on PIL images (antialiased when downscaling).
_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}


def load_image(path: Path, prep: Preprocessing, border: int = 0) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except Exception as err:
        raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    if border:  # a frame that is not part of the picture (ObjectNet)
        img = img.crop((border, border, img.size[0] - border, img.size[1] - border))
    size = prep.input_size
    # Resize the shorter side to size / crop_pct, then take the central size x size crop.
    resize_to = int(math.floor(size / prep.crop_pct))
    w, h = img.size
    if min(w, h) != resize_to:
        scale = resize_to / min(w, h)
        w, h = max(resize_to, round(w * scale)), max(resize_to, round(h * scale))
        img = img.resize((w, h), _INTERPOLATION[prep.interpolation])
    if (w, h) != (size, size):
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class ImageDataset(torch.utils.data.Dataset):
    """Rows of a prepared dataset, decoded on access."""

    def __init__(self, root: Path, rows: Sequence[Row], prep: Preprocessing, border: int = 0):
        self.root = Path(root)
        self.rows = list(rows)
        self.prep = prep
        self.border = border
        self.labels = torch.tensor([r.label for r in self.rows], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return load_image(self.root / self.rows[i].path, self.prep, self.border), self.labels[i]


@dataclass
class InMemoryDataset:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.labels)


def preload(dataset: ImageDataset, desc: str, show_progress: bool = True) -> InMemoryDataset:
    n = len(dataset)
    size = dataset.prep.input_size
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    for i in progress(range(n), desc=f"decode {desc}", unit="img", enabled=show_progress, leave=False):
        images[i] = dataset[i][0]
    return InMemoryDataset(images, dataset.labels.clone())


def sample_rows(prepared: PreparedDataset, part: str | None, samples: int, seed: int) -> list[Row]:
    """At most ``samples`` rows of ``part``, drawn with ``seed`` and kept in manifest order."""
    rows = prepared.select(part)
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:samples].tolist()
    return [rows[i] for i in sorted(pick)]


def open_dataset(prepared: PreparedDataset, part: str | None, prep: Preprocessing, *, preload_images: bool,
                 show_progress: bool = True) -> ImageDataset | InMemoryDataset:
    rows = prepared.select(part)
    if not rows:
        raise DataError(f"dataset {prepared.name!r} has no images in part {part!r}")
    ds = ImageDataset(prepared.root, rows, prep, prepared.border)
    return preload(ds, prepared.name, show_progress) if preload_images else ds


def batches(data: ImageDataset | InMemoryDataset, order: Sequence[int] | torch.Tensor, batch_size: int,
            workers: int = 0, pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches in the given order."""
    order = torch.as_tensor(order, dtype=torch.long)
    if isinstance(data, InMemoryDataset):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield data.images[idx], data.labels[idx]
        return
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=order.tolist(), num_workers=workers,
                                         pin_memory=pin_memory, persistent_workers=False,
                                         worker_init_fn=_ignore_stop_signals if workers else None)
    yield from loader


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the main process, which saves a checkpoint and stops them.

    SLURM signals every process of a job step on preemption or at the time limit; a worker that died
    of it would end the run before the main process could save its state.
    """
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def normalize(images: torch.Tensor, prep: Preprocessing, device: torch.device) -> torch.Tensor:
    x = images.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(prep.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, -1, 1, 1)
    return (x - mean) / std
