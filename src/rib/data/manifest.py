"""Prepared datasets: a manifest of every image, its class map and a held-out split.

``rib data prepare`` turns a dataset folder into a *prepared* folder holding

* ``manifest.csv``: one row per image: path (relative to the dataset root), label (index into the
  dataset's classes), folder, group, instance, part (``finetune``/``heldout``, or ``train`` for
  pretraining corpora);
* ``classes.json``: the dataset's classes in label order, each mapped onto label-space ids;
* ``info.json``: dataset, root folder, counts and the manifest's digest.

The held-out split is stratified by class and grouped by instance, deterministic for a seed, so
the accuracy reported on the fine-tuning dataset is never training accuracy.
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import RibError
from ..io import atomic_dir, read_json, sha256_file, write_json
from ..progress import progress
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


def verify_images(root: Path, records: list[Record], show_progress: bool = True) -> None:
    for rec in progress(records, desc="verify images", unit="img", enabled=show_progress):
        path = root / rec.path
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as err:  # PIL raises many types for broken files
            raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


def prepare(spec: DatasetSpec, root: str | os.PathLike, out_dir: str | os.PathLike, *, fraction: float,
            seed: int, show_progress: bool = True) -> dict:
    """Index, verify and split a dataset folder; write the prepared folder atomically."""
    root = Path(root)
    classes, records = index(spec, root)
    verify_images(root, records, show_progress)
    label_of = {c.folder: i for i, c in enumerate(classes)}
    labels = [label_of[r.folder] for r in records]
    if spec.role == "corpus":
        parts = ["train"] * len(records)
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
        write_json(tmp / "classes.json", {"dataset": spec.name,
                                          "classes": [{"folder": c.folder, "wnids": list(c.wnids)} for c in classes]})
        info = {"dataset": spec.name, "role": spec.role, "layout": spec.layout, "root": str(root),
                "num_images": len(records), "num_classes": len(classes), "parts": counts,
                "split": {"heldout_fraction": fraction, "seed": seed},
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
