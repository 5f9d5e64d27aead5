"""The preprocessed-image cache: a dataset decoded, resized and cropped once per preprocessing.

Every model with the same preprocessing (input size, interpolation, crop fraction, crop mode and,
for 'border', the fill colour; the mean and std are applied per batch later) sees the same uint8
pixels, so the pipeline decodes each dataset once per preprocessing (`rib cache build`, Snakemake
rule and DVC stage ``cache``) and every evaluation and fine-tuning job reads the result as
memory-mapped arrays instead of decoding JPEGs again.

A cache folder, ``cache/<suite>/<key>/<dataset>/`` with ``key`` from :func:`prep_key` (which
starts with the version of the pixel rule, ``v2-``: folders of older rules are never used), holds

* ``shard-00000.npy``, ...: uint8 arrays (k, 3, S, S), the dataset's rows in manifest order,
  ``shard_size`` rows per shard (NumPy's .npy format, opened with ``mmap_mode="r"``);
* ``info.json``: the dataset, its manifest digest, the preprocessing, the number of rows, the shard
  size and each shard's size and sha256.

The pixels are exactly those :func:`rib.data.loading.load_image` returns, so results do not depend
on whether a cache was used. A cache is written to a temporary folder and renamed when complete;
on opening, its structure (files, shapes, sizes, manifest digest, preprocessing) is checked, and
``verify`` also checks every shard's digest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import DamagedFileError, FormatError
from ..io import atomic_dir, read_json, sha256_file, write_json
from ..models.registry import PIXEL_RULE, Preprocessing, prep_key
from ..progress import progress
from .manifest import DataError, PreparedDataset

log = logging.getLogger("rib.cache")

# 2: the pixels of rule 2 (registry.PIXEL_RULE), the preprocessing with crop_mode and fill
FORMAT = 2
SHARD_SIZE = 4096
_KEY = re.compile(rf"^v{PIXEL_RULE}-(\d+)px-(bilinear|bicubic|nearest)-crop([0-9]+(?:\.[0-9]+)?)"
                  r"(?:-(center|squash)|-(border)-fill(\d{1,3})-(\d{1,3})-(\d{1,3}))$")
_OLD_KEY = re.compile(r"^\d+px-(bilinear|bicubic|nearest)-crop[0-9.]+$")


def prep_from_key(key: str) -> Preprocessing:
    """The inverse of :func:`prep_key` (the mean and std are not part of a key: they are defaults)."""
    m = _KEY.match(key)
    if not m:
        old = (f"; {key!r} names a cache of an earlier pixel rule, which is not used: build the caches again"
               if _OLD_KEY.match(key) else "")
        example = prep_key(Preprocessing(224, "bicubic", 0.875))
        raise DataError(f"{key!r} is not a preprocessing key (expected e.g. {example}){old}")
    size, interpolation, crop = int(m.group(1)), m.group(2), float(m.group(3))
    try:
        if m.group(4):
            prep = Preprocessing(size, interpolation, crop, crop_mode=m.group(4))
        else:
            prep = Preprocessing(size, interpolation, crop, crop_mode="border",
                                 fill=tuple(int(v) for v in m.group(6, 7, 8)))
    except ValueError as err:
        raise DataError(f"{key!r}: {err}") from None
    if prep_key(prep) != key:  # e.g. crop0.8750 or a leading zero: one key per preprocessing
        raise DataError(f"{key!r} is not a preprocessing key as rib writes it ({prep_key(prep)!r})")
    return prep


def _pixels(prep: Preprocessing) -> dict:
    """What decides the pixels (info.json's ``preprocessing``)."""
    return {"input_size": prep.input_size, "interpolation": prep.interpolation, "crop_pct": prep.crop_pct,
            "crop_mode": prep.crop_mode, "fill": list(prep.fill), "pixel_rule": PIXEL_RULE}


def build(prepared: PreparedDataset, prep: Preprocessing, out: str | Path, *, workers: int = 0,
          shard_size: int = SHARD_SIZE, show_progress: bool = True) -> dict:
    """Decode every row of ``prepared`` in ``prep`` into shards under ``out`` (replaced atomically)."""
    from .loading import ImageDataset

    rows = list(prepared.rows)
    if not rows:
        raise DataError(f"dataset {prepared.name!r} has no images to cache")
    size = prep.input_size
    ds = ImageDataset(prepared.root, rows, prep, prepared.border)
    loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=False, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    shards = []
    with atomic_dir(out) as tmp:
        done, shard, fill, file = 0, None, 0, None
        bar = progress(loader, desc=f"cache {prepared.name} {prep_key(prep)}", unit="batch", total=len(loader),
                       enabled=show_progress, leave=False)
        for images, _ in bar:
            images = images.numpy()
            start = 0
            while start < len(images):
                if shard is None:
                    k = min(shard_size, len(rows) - done)
                    file = tmp / f"shard-{len(shards):05d}.npy"
                    shard = np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=(k, 3, size, size))
                    with open(file, "r+b") as fh:  # take the space now: a full disk is an error here,
                        os.posix_fallocate(fh.fileno(), 0, file.stat().st_size)  # not a SIGBUS later
                    fill = 0
                take = min(len(images) - start, len(shard) - fill)
                shard[fill:fill + take] = images[start:start + take]
                fill, start, done = fill + take, start + take, done + take
                if fill == len(shard):
                    shard.flush()
                    del shard
                    shard = None
                    stat = file.stat()  # size and modification time: a change of either is checked
                    shards.append({"file": file.name, "rows": fill, "bytes": stat.st_size,
                                   "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(file)})
        info = {"format": FORMAT, "dataset": prepared.name, "manifest_sha256": prepared.info["manifest_sha256"],
                "preprocessing": _pixels(prep), "key": prep_key(prep), "n": len(rows), "shard_size": shard_size,
                "shards": shards}
        write_json(tmp / "info.json", info)
    log.info("cached %s: %d images at %s in %d shard(s), %.1f MB", prepared.name, len(rows), prep_key(prep),
             len(shards), sum(s["bytes"] for s in shards) / 1e6)
    return info


class ImageCache:
    """An opened cache: rows by position in the manifest, read from memory-mapped shards."""

    def __init__(self, folder: Path, info: dict, shards: list[np.ndarray]):
        self.folder, self.info, self.shards = folder, info, shards
        self.shard_size = int(info["shard_size"])
        self.n = int(info["n"])
        self._verified: set[int] = set()

    def _verify(self, shard: int) -> None:
        """Check a shard against its recorded digest the first time it is read (a damaged shard is
        never used: the cache is moved aside and rebuilt)."""
        if shard in self._verified:
            return
        entry = self.info["shards"][shard]
        path = self.folder / entry["file"]
        if sha256_file(path) != entry["sha256"]:
            raise DamagedFileError(f"{path}: cache shard does not match the digest in info.json (altered or "
                                   "damaged)", self.folder)
        self._verified.add(shard)

    def read(self, positions: np.ndarray) -> torch.Tensor:
        """The images at ``positions`` (manifest row numbers), as one uint8 tensor (copied out)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            raise ValueError("no positions to read")
        first, last = int(positions[0]), int(positions[-1])
        s = first // self.shard_size
        contiguous = last - first + 1 == len(positions) and last // self.shard_size == s and \
            bool(np.all(np.diff(positions) == 1))
        for shard in np.unique(positions // self.shard_size):
            self._verify(int(shard))
        if contiguous:  # evaluation: one slice of one shard
            o = first - s * self.shard_size
            return torch.from_numpy(np.array(self.shards[s][o:o + len(positions)]))
        out = np.empty((len(positions), *self.shards[0].shape[1:]), dtype=np.uint8)
        shard_of = positions // self.shard_size
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            out[sel] = self.shards[s][positions[sel] - s * self.shard_size]
        return torch.from_numpy(out)


def open_cache(folder: str | Path, prepared: PreparedDataset, prep: Preprocessing, *,
               verify: bool = False) -> ImageCache:
    """Open the cache of ``prepared`` in ``prep`` at ``folder``; a DataError says what does not match."""
    folder = Path(folder)
    info_path = folder / "info.json"
    if not info_path.exists():
        raise DataError(f"{folder}: not an image cache (no info.json); build it with `rib cache build`")
    try:
        info = read_json(info_path)
    except FormatError as err:
        raise DamagedFileError(f"{err} (damaged cache)", folder) from None
    if info.get("format") != FORMAT:
        raise DataError(f"{info_path}: cache format {info.get('format')!r}, expected {FORMAT}; build it again")
    if info.get("dataset") != prepared.name or info.get("manifest_sha256") != prepared.info["manifest_sha256"]:
        raise DataError(f"{folder}: cache of {info.get('dataset')!r} with another manifest than the prepared "
                        f"{prepared.name!r} ({prepared.root}); build it again")
    if info.get("preprocessing") != _pixels(prep):
        raise DataError(f"{folder}: cached at {info.get('key')}, but the model wants {prep_key(prep)}")
    size = prep.input_size
    shards, total = [], 0
    for entry in info["shards"]:
        path = folder / entry["file"]
        if not path.exists() or path.stat().st_size != entry["bytes"]:
            raise DamagedFileError(f"{path}: missing or truncated cache shard (expected {entry['bytes']} bytes)",
                                   folder)
        if verify and sha256_file(path) != entry["sha256"]:
            raise DamagedFileError(f"{path}: cache shard does not match the digest in info.json (altered or "
                                   "damaged)", folder)
        try:
            arr = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise DamagedFileError(f"{path}: not a readable cache shard ({err})", folder) from None
        if arr.dtype != np.uint8 or arr.shape != (entry["rows"], 3, size, size):
            raise DataError(f"{path}: shard of shape {arr.shape} {arr.dtype}, expected "
                            f"({entry['rows']}, 3, {size}, {size}) uint8")
        shards.append(arr)
        total += entry["rows"]
    if total != info["n"] or total != len(prepared.rows):
        raise DataError(f"{folder}: {total} cached images for {len(prepared.rows)} rows; build the cache again")
    return ImageCache(folder, info, shards)


def find(caches: list[str | Path] | None, prepared: PreparedDataset, prep: Preprocessing) -> ImageCache | None:
    """The cache among ``caches`` (folders) for this dataset and preprocessing, if one is given.

    A folder named for the dataset and the preprocessing that cannot be used is an error: the
    pipeline built it for this job, and decoding instead would hide a broken cache."""
    for folder in caches or []:
        folder = Path(folder)
        if folder.name == prepared.name and folder.parent.name == prep_key(prep):
            return open_cache(folder, prepared, prep)
    if caches:
        log.info("%s: no cache at %s among the given ones; decoding the images", prepared.name, prep_key(prep))
    return None


def digest(cache: ImageCache) -> str:
    """One digest over the shards' recorded digests (what a result cites)."""
    h = hashlib.sha256()
    for entry in cache.info["shards"]:
        h.update(entry["sha256"].encode())
    return h.hexdigest()


def iter_batches(cache: ImageCache, positions: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(positions), batch_size):
        yield cache.read(positions[start:start + batch_size])
