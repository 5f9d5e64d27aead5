"""Indexing the on-disk layouts of the benchmark's datasets.

Each layout turns a dataset folder into records ``(path, class folder, group, instance)``:

* ``wnid_folders``:    ``ROOT/<wnid>/<image>`` (ImageNet val, A, R, Sketch, Cartoon, Drawing)
* ``index_folders``:   ``ROOT/<class index>/<image>`` (ImageNet-V2: folders named 0..999)
* ``mapped_folders``:  ``ROOT/images/<folder>/<image>`` plus ``ROOT/mappings/folder_to_wnids.json``
                       mapping each folder onto one or more label-space ids (ObjectNet)
* ``corruption_tree``: ``ROOT/<corruption>/<severity>/<wnid>/<image>`` (ImageNet-C); the group is
                       ``corruption/severity`` and the instance is ``wnid/image``, so the same base
                       image under different corruptions is one unit of the held-out split.

Problems (missing folder, missing or unexpected class, empty class) raise :class:`LayoutError`
with one line naming the folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import RibError
from .suites import DatasetClass, DatasetSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
MAPPING_FILE = "mappings/folder_to_wnids.json"


class LayoutError(RibError, ValueError):
    pass


@dataclass(frozen=True)
class Record:
    path: str  # relative to the dataset root, '/'-separated
    folder: str  # class folder
    group: str  # sub-domain (ImageNet-C corruption/severity), '' otherwise
    instance: str  # the unit kept on one side of the held-out split


def _images(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder)
                  if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(root: Path, classes: tuple[DatasetClass, ...], rel_prefix: str, group: str,
                   instance_by_name: bool) -> list[Record]:
    if not root.is_dir():
        raise LayoutError(f"{root}: folder not found")
    present = {e.name for e in os.scandir(root) if e.is_dir()}
    expected = [c.folder for c in classes]
    missing = [f for f in expected if f not in present]
    if missing:
        raise LayoutError(f"{root}: missing class folder {missing[0]!r} ({len(missing)} of {len(expected)} missing)")
    unexpected = sorted(present - set(expected))
    if unexpected:
        raise LayoutError(f"{root}: unexpected class folder {unexpected[0]!r} (not in this dataset's classes)")
    records = []
    for folder in expected:
        names = _images(root / folder)
        if not names:
            raise LayoutError(f"{root / folder}: class folder has no images")
        for name in names:
            rel = f"{rel_prefix}{folder}/{name}"
            records.append(Record(rel, folder, group, f"{folder}/{name}" if instance_by_name else rel))
    return records


def read_mapping(root: Path) -> tuple[DatasetClass, ...]:
    path = root / MAPPING_FILE
    try:
        mapping = json.loads(path.read_text())
    except FileNotFoundError:
        raise LayoutError(f"{path}: mapping file not found") from None
    except json.JSONDecodeError as err:
        raise LayoutError(f"{path}: not valid JSON ({err.msg})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, list) and v for v in mapping.values()):
        raise LayoutError(f"{path}: expected a mapping of folder name to a non-empty list of wnids")
    return tuple(DatasetClass(folder, tuple(wnids)) for folder, wnids in sorted(mapping.items()))


def index(spec: DatasetSpec, root: str | os.PathLike) -> tuple[tuple[DatasetClass, ...], list[Record]]:
    """Return the dataset's classes (in label order) and one record per image."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset folder not found")
    if spec.layout in ("wnid_folders", "index_folders"):
        return spec.classes, _class_folders(root, spec.classes, "", "", False)
    if spec.layout == "mapped_folders":
        classes = read_mapping(root)
        if spec.classes is not None and classes != spec.classes:
            raise LayoutError(f"{root / MAPPING_FILE}: classes differ from the {spec.name!r} class map")
        return classes, _class_folders(root / "images", classes, "images/", "", False)
    if spec.layout == "corruption_tree":
        records = []
        for corruption in spec.corruptions:
            for severity in spec.severities:
                sub = root / corruption / str(severity)
                if not sub.is_dir():
                    raise LayoutError(f"{sub}: missing corruption/severity folder")
                records += _class_folders(sub, spec.classes, f"{corruption}/{severity}/",
                                          f"{corruption}/{severity}", True)
        return spec.classes, records
    raise LayoutError(f"dataset {spec.name!r}: unknown layout {spec.layout!r}")
