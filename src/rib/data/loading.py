"""Loading prepared datasets as uint8 image batches in a model's own preprocessing.

Images are decoded, resized and centre-cropped as the model's preprocessing says, and kept as
uint8 (C, H, W). Conversion to float and normalisation happen per batch on the compute device
(:func:`normalize`). Small datasets can be decoded once into memory (``runtime.preload``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models.registry import Preprocessing
from ..progress import progress
from .cache import ImageCache
from .manifest import DataError, PreparedDataset, Row

# PIL's filters, as timm's eval transform uses them on PIL images (antialiased when downscaling).
_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}


def _open_rgb(source, where) -> Image.Image:
    """An image file (path or file object) as RGB; a one-line DataError naming ``where`` otherwise."""
    try:
        with Image.open(source) as im:
            return im.convert("RGB")
    except Exception as err:
        raise DataError(f"{where}: not a readable image ({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class Geometry:
    """The steps that take a (w, h) image to the model's size x size input."""

    resize: tuple[int, int]  # (w, h) after resizing; the image's own size when it is not resized
    pad: tuple[int, int, int, int]  # then padding (left, top, right, bottom) with prep.fill ('border') or 0
    crop: tuple[int, int]  # then the size x size crop's (left, top) in the padded image


def _resized_size(w: int, h: int, prep: Preprocessing) -> tuple[int, int]:
    """(w, h) after the resize of the model's eval transform (timm's transforms_imagenet_eval,
    open_clip's image_transform), with their arithmetic."""
    scale = math.floor(prep.input_size / prep.crop_pct)
    if prep.crop_mode == "squash":  # torchvision Resize((scale, scale))
        return scale, scale
    if prep.crop_mode == "border":  # ResizeKeepRatio((scale, scale), longest=1): the longer side to scale
        ratio = max(h / scale, w / scale)  # its max * longest + min * (1 - longest), exactly
        return round(w / ratio), round(h / ratio)  # Python's round (half to even), as there
    # torchvision Resize(scale): the shorter side to scale, the longer one truncated
    if w <= h:
        return scale, int(scale * h / w)
    return int(scale * w / h), scale


def _geometry(w: int, h: int, prep: Preprocessing) -> Geometry:
    """Resize (see Preprocessing.crop_mode), then torchvision's centre crop (CenterCrop, or timm's and
    open_clip's CenterCropOrPad): a side shorter than size is padded, (size - side) // 2 before it,
    the rest after; the crop starts at round((side - size) / 2)."""
    size = prep.input_size
    w, h = _resized_size(w, h, prep)
    if min(w, h) < 1:
        raise ValueError(f"the image resizes to {w}x{h} pixels")
    pad = ((size - w) // 2 if size > w else 0, (size - h) // 2 if size > h else 0,
           (size - w + 1) // 2 if size > w else 0, (size - h + 1) // 2 if size > h else 0)
    pw, ph = w + pad[0] + pad[2], h + pad[1] + pad[3]
    return Geometry((w, h), pad, (int(round((pw - size) / 2.0)), int(round((ph - size) / 2.0))))


def load_image(path: Path, prep: Preprocessing, border: int = 0) -> torch.Tensor:
    """uint8 (3, S, S): the image in ``prep``, pixel for pixel what the model's own library's eval
    transform makes of it (timm's transforms_imagenet_eval, open_clip's image_transform: torchvision's
    Resize, CenterCrop / CenterCropOrPad on the RGB PIL image), after cropping ``border`` pixels from
    every side."""
    img = _open_rgb(path, path)
    if border:  # a frame that is not part of the picture (ObjectNet)
        img = img.crop((border, border, img.size[0] - border, img.size[1] - border))
    size = prep.input_size
    try:
        g = _geometry(*img.size, prep)
    except ValueError as err:
        raise DataError(f"{path}: {img.size[0]}x{img.size[1]} pixels cannot be preprocessed ({err})") from None
    if g.resize != img.size:
        img = img.resize(g.resize, _INTERPOLATION[prep.interpolation])
    if any(g.pad):  # as torchvision's pad on PIL images (ImageOps.expand)
        left, top, right, bottom = g.pad
        canvas = Image.new("RGB", (img.size[0] + left + right, img.size[1] + top + bottom), prep.fill)
        canvas.paste(img, (left, top))
        img = canvas
    if img.size != (size, size):
        left, top = g.crop
        img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


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
                 show_progress: bool = True, cache: ImageCache | None = None, rows: list[Row] | None = None,
                 decode_device: torch.device | None = None
                 ) -> ImageDataset | InMemoryDataset | CachedDataset | EncodedDataset:
    """The rows of ``part`` (None: all; or exactly ``rows``) in ``prep``: from ``cache`` when given,
    else decoded (on ``decode_device`` when given, see EncodedDataset; else once into memory with
    ``preload_images``, else on access)."""
    rows = prepared.select(part) if rows is None else rows
    if not rows:
        raise DataError(f"dataset {prepared.name!r} has no images in part {part!r}")
    if cache is None and decode_device is not None:
        return EncodedDataset(prepared.root, rows, prep, decode_device, prepared.border)
    if cache is not None:
        number = {r.path: i for i, r in enumerate(prepared.rows)}
        positions = np.array([number[r.path] for r in rows], dtype=np.int64)
        return CachedDataset(cache, positions, torch.tensor([r.label for r in rows], dtype=torch.long))
    ds = ImageDataset(prepared.root, rows, prep, prepared.border)
    return preload(ds, prepared.name, show_progress) if preload_images else ds


class EncodedDataset(torch.utils.data.Dataset):
    """Rows of a prepared dataset as their encoded bytes, for decoding on the compute device
    (``runtime.gpu_decode``, where no cache exists): JPEGs with torchvision.io.decode_jpeg on the
    device, anything else with PIL. The resize runs in torch (antialiased), so pixels can differ
    from PIL's by a grey level here and there: numbers are close to, not identical with, the
    default path's."""

    def __init__(self, root: Path, rows: Sequence[Row], prep: Preprocessing, device: torch.device, border: int = 0):
        self.root, self.rows, self.prep, self.device, self.border = Path(root), list(rows), prep, device, border
        self.labels = torch.tensor([r.label for r in self.rows], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return (self.root / self.rows[i].path).read_bytes(), self.labels[i]


def _collate_encoded(items):
    return [b for b, _ in items], torch.stack([y for _, y in items])


def decode_on_device(blobs: list[bytes], prep: Preprocessing, device: torch.device, border: int = 0,
                     paths: list | None = None) -> torch.Tensor:
    """uint8 (N, 3, S, S): decode (JPEG on ``device``), crop the border, resize, pad and crop as
    :func:`load_image` does (the same sizes and offsets; the resize antialiased in torch)."""
    import torch.nn.functional as F
    import torchvision
    from torchvision.io import ImageReadMode

    jpeg = [i for i, b in enumerate(blobs) if b[:2] == b"\xff\xd8"]
    images: list[torch.Tensor | None] = [None] * len(blobs)
    if jpeg:
        data = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpeg]
        for i, img in zip(jpeg, torchvision.io.decode_jpeg(data, mode=ImageReadMode.RGB, device=device)):
            images[i] = img
    for i, img in enumerate(images):
        if img is None:  # PNG and the rest: PIL, as load_image does
            rgb = _open_rgb(io.BytesIO(blobs[i]), paths[i] if paths else f"image {i}")
            images[i] = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).to(device)
    size = prep.input_size
    mode = prep.interpolation  # bilinear | bicubic | nearest: torch's modes of the same names
    out = torch.empty((len(blobs), 3, size, size), dtype=torch.uint8, device=device)
    for k, img in enumerate(images):
        if border:
            img = img[:, border:img.shape[1] - border, border:img.shape[2] - border]
        try:
            g = _geometry(img.shape[2], img.shape[1], prep)
        except ValueError as err:
            where = paths[k] if paths else f"image {k}"
            raise DataError(f"{where}: {img.shape[2]}x{img.shape[1]} pixels cannot be preprocessed ({err})") from None
        w, h = g.resize
        if (h, w) != tuple(img.shape[1:]):
            img = F.interpolate(img[None].float(), size=(h, w), mode=mode, antialias=mode != "nearest",
                                align_corners=False if mode != "nearest" else None)[0]
            img = img.round_().clamp_(0, 255).to(torch.uint8)
        if any(g.pad):
            left, top, right, bottom = g.pad
            canvas = torch.tensor(prep.fill, dtype=torch.uint8, device=device).view(3, 1, 1)
            canvas = canvas.expand(3, h + top + bottom, w + left + right).clone()
            canvas[:, top:top + h, left:left + w] = img
            img = canvas
        left, top = g.crop
        out[k] = img[:, top:top + size, left:left + size]
    return out


@dataclass
class CachedDataset:
    """Rows of a dataset read from its preprocessed cache (:mod:`rib.data.cache`)."""

    cache: ImageCache
    positions: np.ndarray  # the rows' numbers in the manifest (= in the cache)
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def _prefetched(items: Iterator, depth: int = 2) -> Iterator:
    """Produce ``items`` in a background thread, ``depth`` ahead: reading the next batch from the
    cache overlaps with computing on this one (torch releases the GIL while it computes)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as err:  # handed to the consumer
            q.put(err)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let the producer see the stop flag
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def batches(data: ImageDataset | InMemoryDataset | CachedDataset, order: Sequence[int] | torch.Tensor,
            batch_size: int, workers: int = 0, pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches in the given order."""
    order = torch.as_tensor(order, dtype=torch.long)
    if isinstance(data, CachedDataset):
        positions = data.positions[order.numpy()]

        def read():
            for start in range(0, len(order), batch_size):
                images = data.cache.read(positions[start:start + batch_size])
                yield (images.pin_memory() if pin_memory else images), data.labels[order[start:start + batch_size]]
        yield from _prefetched(read())
        return
    if isinstance(data, InMemoryDataset):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield data.images[idx], data.labels[idx]
        return
    yield from _from_loader(_loader(data, order.tolist(), batch_size, workers, pin_memory), data, order, batch_size)


def _loader(data: ImageDataset | EncodedDataset, sampler, batch_size: int, workers: int, pin_memory: bool,
            persistent: bool = False) -> torch.utils.data.DataLoader:
    encoded = isinstance(data, EncodedDataset)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       collate_fn=_collate_encoded if encoded else None,
                                       pin_memory=pin_memory and not encoded,
                                       persistent_workers=persistent and workers > 0,
                                       prefetch_factor=4 if workers else None,
                                       worker_init_fn=_ignore_stop_signals if workers else None)


def _from_loader(loader, data, order: torch.Tensor, batch_size: int):
    if not isinstance(data, EncodedDataset):
        yield from loader
        return
    for start, (blobs, labels) in zip(range(0, len(order), batch_size), loader):
        paths = [data.root / data.rows[int(i)].path for i in order[start:start + batch_size]]
        yield decode_on_device(blobs, data.prep, data.device, data.border, paths), labels


class _EpochOrder(torch.utils.data.Sampler):
    """The indices of the epoch in progress, set before each pass over the loader."""

    def __init__(self):
        self.order: list[int] = []

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class EpochBatches:
    """:func:`batches` for a training run, one call per epoch (each in its own order). With DataLoader
    workers, one loader serves every epoch and its worker processes live for the whole run
    (``persistent_workers``): new workers each epoch cost a few tenths of a second, more than a whole
    epoch of a small fine-tuning set."""

    def __init__(self, data, batch_size: int, workers: int = 0, pin_memory: bool = False):
        self.data, self.batch_size, self.workers, self.pin_memory = data, batch_size, workers, pin_memory
        self.sampler = self.loader = None
        if workers and isinstance(data, (ImageDataset, EncodedDataset)):
            self.sampler = _EpochOrder()
            self.loader = _loader(data, self.sampler, batch_size, workers, pin_memory, persistent=True)

    def __call__(self, order: Sequence[int] | torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is None:
            yield from batches(self.data, order, self.batch_size, self.workers, self.pin_memory)
            return
        order = torch.as_tensor(order, dtype=torch.long)
        self.sampler.order = order.tolist()
        yield from _from_loader(self.loader, self.data, order, self.batch_size)


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
