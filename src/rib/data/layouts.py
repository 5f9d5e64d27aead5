"""Indexing the on-disk layouts of the benchmark's datasets.

Each layout turns a dataset folder into records ``(path, class folder, group, instance)``:

* ``wnid_folders``:    ``ROOT/<wnid>/<image>`` (ImageNet val, A, R, Sketch, Cartoon, Drawing)
* ``index_folders``:   ``ROOT/<class index>/<image>`` (ImageNet-V2: folders named 0..999)
* ``mapped_folders``:  ``ROOT/images/<folder>/<image>`` plus ObjectNet's mapping files in
                       ``ROOT/mappings/``, which map a folder onto one or more label-space ids;
                       folders that map onto none are left out
* ``corruption_tree``: ``ROOT/<corruption>/<severity>/<wnid>/<image>`` (ImageNet-C); the group is
                       ``corruption/severity`` and the instance is ``wnid/image``, so the same base
                       image under different corruptions is one unit of the held-out split.

Archives often unpack into a wrapper folder (``imagenet-a/``, ``objectnet-1.0/``): the layout is
looked for in the given folder and, failing that, inside a single subfolder. Problems (missing
folder, missing or unexpected class, empty class) raise :class:`LayoutError` with one line naming
the folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import RibError
from ..io import read_json
from .suites import DatasetClass, DatasetSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
MAPPING_DIR = "mappings"


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
                   instance_by_name: bool, allow_extra: bool = False) -> list[Record]:
    if not root.is_dir():
        raise LayoutError(f"{root}: folder not found")
    present = {e.name for e in os.scandir(root) if e.is_dir()}
    expected = [c.folder for c in classes]
    missing = [f for f in expected if f not in present]
    if missing:
        raise LayoutError(f"{root}: missing class folder {missing[0]!r} ({len(missing)} of {len(expected)} missing)")
    unexpected = sorted(present - set(expected))
    if unexpected and not allow_extra:
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


OBJECTNET_FILES = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                   "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")


def read_mapping(root: Path, label_space: tuple[str, ...]) -> tuple[DatasetClass, ...]:
    """ObjectNet's classes from the mapping files shipped in its archive (``ROOT/mappings/``).

    ``folder_to_objectnet_label.json`` names each image folder's class, ``objectnet_to_imagenet_1k.json``
    lists the ImageNet class names each ObjectNet class stands for ("name; name"),
    ``imagenet_to_label_2012_v2`` gives the ImageNet class name of each ILSVRC-2012 id (one per line)
    and ``pytorch_to_imagenet_2012_id.json`` maps the usual model output index (= position in the
    sorted wnid list) to that id. Folders of classes with no ImageNet counterpart are left out.
    """
    maps = root / MAPPING_DIR
    folder_label = read_json(maps / OBJECTNET_FILES[0])
    label_names = read_json(maps / OBJECTNET_FILES[1])
    to_2012 = read_json(maps / OBJECTNET_FILES[2])
    try:
        names_2012 = [line.strip() for line in (maps / OBJECTNET_FILES[3]).read_text().splitlines()]
    except FileNotFoundError:
        raise LayoutError(f"{maps / OBJECTNET_FILES[3]}: mapping file not found") from None
    if not all(isinstance(x, dict) for x in (folder_label, label_names, to_2012)):
        raise LayoutError(f"{maps}: mapping files are not JSON objects")
    position_of_2012 = {int(v): int(k) for k, v in to_2012.items()}
    ids_by_name: dict[str, list[int]] = {}
    for i, name in enumerate(names_2012):
        ids_by_name.setdefault(name, []).append(i)
    folder_of_label = {label: folder for folder, label in folder_label.items()}
    classes = []
    for label, names in label_names.items():
        if label not in folder_of_label:
            raise LayoutError(f"{maps / OBJECTNET_FILES[1]}: class {label!r} has no image folder")
        wnids = []
        for name in (n.strip() for n in names.split(";")):
            ids = ids_by_name.get(name)
            if not ids:
                raise LayoutError(f"{maps / OBJECTNET_FILES[1]}: {label!r} maps to unknown ImageNet class {name!r}")
            if len(ids) > 1:
                raise LayoutError(f"{maps / OBJECTNET_FILES[1]}: {label!r} maps to ambiguous ImageNet class {name!r}")
            position = position_of_2012.get(ids[0])
            if position is None or not 0 <= position < len(label_space):
                raise LayoutError(f"{maps / OBJECTNET_FILES[2]}: no model index for ImageNet id {ids[0]}")
            wnids.append(label_space[position])
        classes.append(DatasetClass(folder_of_label[label], tuple(wnids)))
    return tuple(sorted(classes, key=lambda c: c.folder))


def write_mapping(root: Path, classes: tuple[DatasetClass, ...], class_names: dict[str, str],
                  label_space: tuple[str, ...], extra_folders: dict[str, str] | None = None) -> None:
    """Write ObjectNet-format mapping files for ``classes`` (used by the synthetic suite)."""
    maps = root / MAPPING_DIR
    maps.mkdir(parents=True, exist_ok=True)
    label_of = {c.folder: c.folder.replace("_", " ").title() for c in classes}
    folder_label = {**label_of, **(extra_folders or {})}
    (maps / OBJECTNET_FILES[0]).write_text(json.dumps(folder_label, indent=1, sort_keys=True) + "\n")
    names = {label_of[c.folder]: "; ".join(class_names[w] for w in c.wnids) for c in classes}
    (maps / OBJECTNET_FILES[1]).write_text(json.dumps(names, indent=1, sort_keys=True) + "\n")
    (maps / OBJECTNET_FILES[2]).write_text(json.dumps({str(i): i for i in range(len(label_space))}) + "\n")
    (maps / OBJECTNET_FILES[3]).write_text("".join(class_names[w] + "\n" for w in label_space))


def _has_layout(spec: DatasetSpec, root: Path) -> bool:
    if spec.layout == "mapped_folders":
        return (root / MAPPING_DIR).is_dir() and (root / "images").is_dir()
    if spec.layout == "corruption_tree":
        return any((root / c).is_dir() for c in spec.corruptions)
    return any((root / c.folder).is_dir() for c in spec.classes)


def find_root(spec: DatasetSpec, root: str | os.PathLike) -> Path:
    """The folder that holds the layout: ``root`` itself, or the folder a wrapper directory holds
    (archives often unpack into one top-level folder such as ``imagenet-a/``)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset folder not found")
    here = root
    for _ in range(4):
        if _has_layout(spec, here):
            return here
        subdirs = [e for e in os.scandir(here) if e.is_dir() and not e.name.startswith((".", "__"))]
        if len(subdirs) != 1:
            break
        here = Path(subdirs[0].path)
    raise LayoutError(f"{root}: no {spec.layout.replace('_', ' ')} layout of {spec.name!r} found in it")


@dataclass(frozen=True)
class Index:
    root: Path  # the folder holding the layout; record paths are relative to it
    classes: tuple[DatasetClass, ...]
    records: list[Record]
    ignored_folders: tuple[str, ...] = ()  # image folders outside the label space (ObjectNet)


def index(spec: DatasetSpec, root: str | os.PathLike, label_space: tuple[str, ...]) -> Index:
    """Find the layout under ``root``; return its classes (in label order) and one record per image."""
    root = find_root(spec, root)
    if spec.layout in ("wnid_folders", "index_folders"):
        return Index(root, spec.classes, _class_folders(root, spec.classes, "", "", False, spec.only is not None))
    if spec.layout == "mapped_folders":
        classes = read_mapping(root, label_space)
        where = root / MAPPING_DIR
        kept = spec.keep(classes)  # data.classes
        if spec.classes is not None and kept != spec.classes:
            raise LayoutError(f"{where}: classes differ from the {spec.name!r} class map")
        if spec.expected_num_classes is not None and len(classes) != spec.expected_num_classes:
            raise LayoutError(f"{where}: {len(classes)} classes map onto the label space, "
                              f"expected {spec.expected_num_classes}")
        classes = kept
        mapped = {c.folder for c in classes}
        ignored = tuple(sorted(e.name for e in os.scandir(root / "images") if e.is_dir() and e.name not in mapped))
        records = _class_folders(root / "images", classes, "images/", "", False, allow_extra=True)
        return Index(root, classes, records, ignored)
    if spec.layout == "corruption_tree":
        records = []
        for corruption in spec.corruptions:
            for severity in spec.severities:
                sub = root / corruption / str(severity)
                if not sub.is_dir():
                    raise LayoutError(f"{sub}: missing corruption/severity folder")
                records += _class_folders(sub, spec.classes, f"{corruption}/{severity}/",
                                          f"{corruption}/{severity}", True, spec.only is not None)
        return Index(root, spec.classes, records)
    raise LayoutError(f"dataset {spec.name!r}: unknown layout {spec.layout!r}")
