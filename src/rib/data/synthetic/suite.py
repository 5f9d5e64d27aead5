"""rib-mini: the embedded, synthetic stand-in for ImageNet-RIB.

The suite mirrors the benchmark's structure at toy scale:

* a label space of ``num_classes`` shape classes (the ImageNet-1K analogue), with WordNet-like ids;
* ``source``: the pretraining domain's validation set (ImageNet-1K val), class folders by wnid;
* eight shift datasets, each in the layout of its real counterpart:
  ``v2`` (numeric class folders, same renderer with fresh seeds and shifted statistics),
  ``a`` and ``r`` (a subset of the classes, like the 200-class A and R), ``sketch``,
  ``objectnet`` (its own folder names, a mapping file onto the label space, one folder standing for
  two label-space classes), ``cartoon``, ``drawing``, and ``c`` (source-domain images under 15
  corruptions x 5 severities in the ImageNet-C tree; a base image keeps its file name in every leaf
  it appears in, so the held-out split keeps it on one side);
* two pretraining corpora: ``narrow`` (source domain only, the IN-1K analogue) and ``diverse``
  (about ten times more images in a mixture of every style, the LAION-2B analogue).

Every image is a pure function of (seed, dataset, class, index), so generation is deterministic
and each dataset can be generated independently. This module only defines the suite (cheap to
import); :mod:`rib.data.synthetic.generate` draws and writes the images.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..suites import (IMAGENET_C_CORRUPTIONS, IMAGENET_C_SEVERITIES, DatasetClass, DatasetSpec, Suite,
                      register_suite)
from .shapes import ShapeClass, shape_classes

SUITE = "rib-mini"
# The ImageNet-C corruptions (implemented in corruptions.py, which is imported only to generate).
CORRUPTIONS = IMAGENET_C_CORRUPTIONS
SEVERITIES = IMAGENET_C_SEVERITIES
# Each ImageNet-C leaf draws its images from a pool of this many times more base images per class,
# so a base image appears in a few leaves (in ImageNet-C each of the 50,000 photos is in all 75)
# without all leaves sharing one set. With 75 leaves a photo is in about 75 / 40 ~ 2 of them: a
# fine-tuning split of C holds many distinct photos, not a few photos memorised under every
# corruption (with a pool of 10, FT on C lowered C's held-out accuracy: it learnt the photos).
C_POOL_FACTOR = 40
SHIFTS = ("v2", "a", "r", "sketch", "objectnet", "cartoon", "drawing", "c")
CORPORA = ("narrow", "diverse")

# Style mixture of the diverse corpus (weights), and the chance that an image of it is degraded.
DIVERSE_MIX = {"source": 0.25, "v2": 0.1, "sketch": 0.1, "cartoon": 0.1, "drawing": 0.1, "r": 0.15,
               "objectnet": 0.1, "a": 0.1}
DIVERSE_DEGRADE = 0.15
# ObjectNet-style merges: one folder standing for several label-space classes.
OBJECTNET_MERGES = {"round_object": ("circle", "ring")}
# ObjectNet's frame (pixels; the real one is 2 pixels at full resolution) and how many folders of
# shapes outside the label space it gets (ObjectNet has 200 classes with no ImageNet counterpart).
OBJECTNET_BORDER = 1
OBJECTNET_UNMAPPED = 2
# Class-subset fractions, mirroring 200/1000 (A, R) and 113/1000 (ObjectNet) at toy scale.
SUBSET_FRACTION = {"a": 0.8, "r": 0.8, "objectnet": 0.7}

DESCRIPTIONS = {
    "source": "source domain validation set (ImageNet-1K val analogue)",
    "v2": "re-collection of the source domain, fresh seeds, shifted statistics (ImageNet-V2)",
    "a": "hard examples: small, occluded objects among clutter (ImageNet-A)",
    "r": "renditions: paintings, embroidery, origami, graffiti, toys (ImageNet-R)",
    "sketch": "black outline sketches on white (ImageNet-Sketch)",
    "objectnet": "unusual rotations, viewpoints and cluttered rooms (ObjectNet)",
    "cartoon": "flat colours, thick outlines (ImageNet-Cartoon)",
    "drawing": "pencil hatching on paper (ImageNet-Drawing)",
    "c": "source images under 15 corruptions x 5 severities (ImageNet-C)",
    "narrow": "pretraining corpus: the source domain only (IN-1K analogue)",
    "diverse": "pretraining corpus: every style, ~10x the images (LAION-2B analogue)",
}


def _stable_code(name: str) -> int:
    return zlib.crc32(name.encode())


def _subset(shapes: tuple[ShapeClass, ...], dataset: str, seed: int) -> tuple[ShapeClass, ...]:
    frac = SUBSET_FRACTION.get(dataset)
    if frac is None:
        return shapes
    k = max(2, int(round(frac * len(shapes))))
    # Classes that a merged folder stands for are always kept, so the merge exists at every size.
    names = [s.name for s in shapes]
    must = [names.index(n) for group in (OBJECTNET_MERGES.values() if dataset == "objectnet" else ())
            if all(m in names for m in group) for n in group]
    rest = [i for i in range(len(shapes)) if i not in must]
    rng = np.random.default_rng([seed, _stable_code("subset"), _stable_code(dataset)])
    extra = rng.choice(rest, size=max(0, min(k - len(must), len(rest))), replace=False).tolist()
    return tuple(shapes[i] for i in sorted(must + extra))


def _folder(shape: ShapeClass) -> str:
    return shape.name.replace(" ", "_")


def _classes(dataset: str, shapes: tuple[ShapeClass, ...], seed: int) -> tuple[DatasetClass, ...]:
    chosen = _subset(shapes, dataset, seed)
    if dataset == "objectnet":
        by_name = {s.name: s for s in chosen}
        classes, merged = [], set()
        for folder, names in OBJECTNET_MERGES.items():
            if all(n in by_name for n in names):
                classes.append(DatasetClass(folder, tuple(by_name[n].wnid for n in names)))
                merged.update(names)
        classes += [DatasetClass(_folder(s), (s.wnid,)) for s in chosen if s.name not in merged]
        return tuple(sorted(classes, key=lambda c: c.folder))
    if dataset == "v2":
        return tuple(DatasetClass(str(i), (s.wnid,)) for i, s in enumerate(chosen))
    return tuple(DatasetClass(s.wnid, (s.wnid,)) for s in chosen)


# As ImageNet-C, -Cartoon and -Drawing keep the file names of the ImageNet val photos they render,
# c, cartoon and drawing name their images as the source's (<wnid>_<index>): one photo family.
SOURCE_PHOTOS = "source"
PHOTO_FAMILY = ("source", "cartoon", "drawing", "c")

LAYOUT = {"source": "wnid_folders", "v2": "index_folders", "objectnet": "mapped_folders",
          "c": "corruption_tree", "narrow": "wnid_folders", "diverse": "wnid_folders"}


@register_suite(SUITE)
def build_suite(params: dict) -> Suite:
    syn = params["synthetic"]
    shapes = shape_classes(syn["num_classes"])
    seed = params["seed"]
    datasets: dict[str, DatasetSpec] = {}
    for name in ("source",) + SHIFTS + CORPORA:
        role = "source" if name == "source" else ("corpus" if name in CORPORA else "shift")
        datasets[name] = DatasetSpec(
            name=name,
            role=role,
            layout=LAYOUT.get(name, "wnid_folders"),
            description=DESCRIPTIONS[name],
            classes=_classes(name, shapes, seed),
            corruptions=CORRUPTIONS if name == "c" else (),
            severities=SEVERITIES if name == "c" else (),
            border=OBJECTNET_BORDER if name == "objectnet" else 0,
            photos=SOURCE_PHOTOS if name in PHOTO_FAMILY else None,
        )
    return Suite(
        name=SUITE,
        label_space=tuple(s.wnid for s in shapes),
        class_names={s.wnid: s.name for s in shapes},
        datasets=datasets,
        synthetic=True,
        class_map_version="2 (ObjectNet-format mapping files, 1-pixel frame)",
    )
