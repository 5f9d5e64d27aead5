"""Prepared datasets: a manifest of every image, its class map and a held-out split.

``rib data prepare`` turns a dataset folder into a *prepared* folder holding

* ``manifest.csv``: one row per image: path (relative to the dataset root), label (index into the
  dataset's classes), folder, group, instance, part (``finetune``/``heldout``, or ``train`` for
  pretraining corpora);
* ``classes.json``: the dataset's classes in label order, each mapped onto label-space ids;
* ``info.json``: dataset, root folder, counts and the manifest's digest.

The held-out split is stratified by class and grouped by instance, deterministic for a seed, so
the accuracy reported on the fine-tuning dataset is never training accuracy. With
``split.leak_free``, datasets that render the same photos (ImageNet val, -C, -Cartoon, -Drawing)
are split by photo instead, the same way in each (:func:`photo_split`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ..errors import RibError
from ..io import atomic_dir, read_json, sha256_file, write_json
from ..progress import log, progress
from .layouts import Record, index
from .suites import DatasetClass, DatasetSpec

FIELDS = ("path", "label", "folder", "group", "instance", "part")
PARTS = ("finetune", "heldout")


class DataError(RibError, ValueError):
    pass


@dataclass(frozen=True)
class Row:
    path: str
    label: int
    folder: str
    group: str
    instance: str
    part: str


def split_parts(labels: list[int], instances: list[str], fraction: float, seed: int, salt: str = "") -> list[str]:
    """Assign each item to 'finetune' or 'heldout', stratified by label and grouped by instance.

    Within every class, the distinct instances are shuffled with a generator seeded by
    (seed, salt, label) and round(fraction * n) of them (at least one, and at least one left for
    fine-tuning when the class has two or more) are held out. All items of an instance share a part.
    """
    by_label: dict[int, set[str]] = {}
    for lab, inst in zip(labels, instances):
        by_label.setdefault(lab, set()).add(inst)
    held: set[tuple[int, str]] = set()
    for lab, insts in by_label.items():
        unique = sorted(insts)
        rng = np.random.default_rng([seed, zlib.crc32(salt.encode()), lab])
        order = rng.permutation(len(unique))
        n = len(unique)
        k = int(round(fraction * n))
        k = min(max(k, 1), n - 1) if n >= 2 else 0
        held.update((lab, unique[i]) for i in order[:k])
    return ["heldout" if (lab, inst) in held else "finetune" for lab, inst in zip(labels, instances)]


def photo_of(path: str) -> str:
    """The base photo an image shows, across a family of datasets that render the same photos: its
    file name without the extension (ILSVRC2012_val_00000001 in ImageNet val, -C, -Cartoon, -Drawing)."""
    return PurePosixPath(path).stem


def photo_split(photos: list[str], fraction: float, seed: int, family: str) -> list[str]:
    """'heldout' or 'finetune' for each photo, decided by the photo alone: a photo is held out when
    a hash of (seed, family, photo) falls below ``fraction``. Every dataset of the family puts the
    same photo on the same side, whatever subset of the photos it has (ImageNet-C keeps 5 per class
    and leaf), so no photo a model is fine-tuned on in one rendition is held out in another. The
    split is not stratified: each class keeps about ``fraction`` of its photos."""
    def held(photo: str) -> bool:
        digest = hashlib.sha256(f"{seed}/{family}/{photo}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction

    return ["heldout" if held(p) else "finetune" for p in photos]


def verify_images(root: Path, records: list[Record], *, skip_corrupt: bool = False,
                  show_progress: bool = True) -> tuple[list[Record], list[str]]:
    """Decode-check every image. A broken one stops with its path, or, with ``skip_corrupt``, is
    left out; returns (the readable records, the paths left out)."""
    good, skipped = [], []
    for rec in progress(records, desc="verify images", unit="img", enabled=show_progress):
        path = root / rec.path
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as err:  # PIL raises many types for broken files
            if not skip_corrupt:
                raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err}); "
                                "set data.skip_corrupt_images to leave such files out") from None
            log.warning("%s: not a readable image (%s); left out", path, type(err).__name__)
            skipped.append(rec.path)
            continue
        good.append(rec)
    return good, skipped


def corruption_subset(records: list[Record], per_leaf: int, num_classes: int, seed: int) -> list[Record]:
    """A fixed, seeded subset of an ImageNet-C-style tree: ``per_leaf`` images in every
    corruption/severity leaf, the same number from each class (``per_leaf // num_classes``, at
    least one) and the same base images (file names) in every leaf where they exist."""
    per_class = max(1, per_leaf // num_classes)
    names: dict[str, set[str]] = {}
    for rec in records:
        names.setdefault(rec.folder, set()).add(rec.instance)
    keep: set[str] = set()
    for folder, insts in names.items():
        ordered = sorted(insts)
        rng = np.random.default_rng([seed, zlib.crc32(folder.encode())])
        keep.update(ordered[i] for i in rng.permutation(len(ordered))[:per_class])
    return [r for r in records if r.instance in keep]


def prepare(spec: DatasetSpec, root: str | os.PathLike, out_dir: str | os.PathLike, *, label_space: tuple[str, ...],
            fraction: float, seed: int, skip_corrupt: bool = False, corruption_per_leaf: int | None = None,
            class_map_version: str = "", by_photo: bool = False, show_progress: bool = True) -> dict:
    """Index, verify and split a dataset folder; write the prepared folder atomically.

    ``by_photo`` (split.leak_free): a dataset of a photo family (``spec.photos``) is split by
    :func:`photo_split`, the same for every dataset of the family; others as always."""
    found = index(spec, root, label_space)
    root, classes, records = found.root, found.classes, found.records
    total = len(records)
    if corruption_per_leaf and spec.is_corruption_tree:
        records = corruption_subset(records, corruption_per_leaf, len(classes), seed)
    records, skipped = verify_images(root, records, skip_corrupt=skip_corrupt, show_progress=show_progress)
    label_of = {c.folder: i for i, c in enumerate(classes)}
    labels = [label_of[r.folder] for r in records]
    family = spec.photos if by_photo and spec.role != "corpus" else None
    if spec.role == "corpus":
        parts = ["train"] * len(records)
    elif family:
        parts = photo_split([photo_of(r.path) for r in records], fraction, seed, family)
    else:
        parts = split_parts(labels, [r.instance for r in records], fraction, seed, salt=spec.name)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for rec, lab, part in zip(records, labels, parts):
        writer.writerow([rec.path, lab, rec.folder, rec.group, rec.instance, part])
    counts = {p: parts.count(p) for p in sorted(set(parts))}
    with atomic_dir(out_dir) as tmp:
        (tmp / "manifest.csv").write_text(buf.getvalue())
        write_json(tmp / "classes.json", {"dataset": spec.name, "class_map_version": class_map_version,
                                          "label_space_size": len(label_space),
                                          "classes": [{"folder": c.folder, "wnids": list(c.wnids)} for c in classes]})
        info = {"dataset": spec.name, "role": spec.role, "layout": spec.layout, "root": str(root),
                "num_images": len(records), "num_classes": len(classes), "parts": counts,
                "split": {"heldout_fraction": fraction, "seed": seed, "by_photo": family}, "border": spec.border,
                "found_images": total, "corruption_per_leaf": corruption_per_leaf if spec.is_corruption_tree else None,
                "skipped_images": len(skipped), "skipped": skipped[:1000],
                "ignored_folders": list(found.ignored_folders),
                "manifest_sha256": sha256_file(tmp / "manifest.csv")}
        write_json(tmp / "info.json", info)
    return info


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared folder, read back."""

    name: str
    root: Path
    classes: tuple[DatasetClass, ...]
    rows: tuple[Row, ...]
    info: dict

    def select(self, part: str | None) -> list[Row]:
        if part is None:
            return list(self.rows)
        return [r for r in self.rows if r.part == part]

    @property
    def border(self) -> int:
        return int(self.info.get("border", 0))

    @property
    def groups(self) -> list[str]:
        return sorted({r.group for r in self.rows if r.group})


def load_prepared(prepared_dir: str | os.PathLike) -> PreparedDataset:
    prepared_dir = Path(prepared_dir)
    info_path = prepared_dir / "info.json"
    if not info_path.exists():
        raise DataError(f"{prepared_dir}: not a prepared dataset (no info.json); run `rib data prepare` first")
    info = read_json(info_path)
    manifest = prepared_dir / "manifest.csv"
    digest = sha256_file(manifest)
    if digest != info.get("manifest_sha256"):
        raise DataError(f"{manifest}: digest {digest[:12]} does not match info.json; prepare the dataset again")
    classes = tuple(DatasetClass(c["folder"], tuple(c["wnids"]))
                    for c in read_json(prepared_dir / "classes.json")["classes"])
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise DataError(f"{manifest}: expected columns {','.join(FIELDS)}")
        rows = tuple(Row(r["path"], int(r["label"]), r["folder"], r["group"], r["instance"], r["part"]) for r in reader)
    return PreparedDataset(info["dataset"], Path(info["root"]), classes, rows, info)
