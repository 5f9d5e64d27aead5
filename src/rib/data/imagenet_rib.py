"""imagenet-rib: the real datasets of the benchmark, their sources and their class maps.

The label space is ImageNet-1K's 1000 WordNet ids in the standard (sorted) order. Every dataset is
one :class:`~rib.data.suites.DatasetSpec`: where it comes from (archives with mirrors, sizes and
checksums, or instructions for a manual download), its on-disk layout, and its classes mapped onto
the label space:

* ``imagenet`` (ImageNet-1K val): 1000 wnid folders; manual (your ImageNet licence).
* ``v2`` (ImageNet-V2 matched-frequency): folders ``0``..``999`` = index in the sorted wnid list.
* ``a``, ``r``: 200 wnid folders each; the subsets are timm's lists (``timm/data/_info``).
* ``sketch``, ``cartoon``, ``drawing``: 1000 wnid folders.
* ``objectnet`` (ObjectNet 1.0): ``images/<folder>``; its 113 classes that overlap ImageNet-1K are
  read from the mapping files inside its archive (a class's logit is the max over its ImageNet
  classes); a 2-pixel border is cropped; manual (password-protected, licence to accept).
* ``c`` (ImageNet-C): ``<corruption>/<severity>/<wnid>`` for 15 corruptions x 5 severities.

The archive facts (URLs, sizes, digests) were gathered from public loaders and the datasets'
pages; a mismatch is reported with both digests, never ignored.

timm's class lists are read from its installed data files without importing timm (which would
import torch), so validating a configuration stays fast.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from ..errors import MissingFileError
from .suites import (IMAGENET_C_CORRUPTIONS, IMAGENET_C_SEVERITIES, Archive, DatasetClass, DatasetSpec, Source,
                     Suite, register_suite)

SUITE = "imagenet-rib"
VAL_PHOTOS = "imagenet-val"  # ImageNet val, -C, -Cartoon and -Drawing show the same 50,000 photos
# timm's lists are pinned with timm's version (pyproject.toml); ObjectNet's map comes from its archive.
CLASS_MAP_VERSION = "imagenet-rib/1 (ImageNet-1K, A and R lists of timm 1.0.31)"


@lru_cache(maxsize=None)
def timm_info(filename: str) -> list[str]:
    """Lines of one of timm's packaged ImageNet info files (timm/data/_info/FILENAME)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        raise MissingFileError("timm is not installed; it provides the ImageNet class lists")
    path = Path(spec.origin).parent / "data" / "_info" / filename
    if not path.exists():
        raise MissingFileError(f"{path}: timm's ImageNet class list is missing")
    return path.read_text().splitlines()


def imagenet_wnids() -> tuple[str, ...]:
    return tuple(timm_info("imagenet_synsets.txt"))


def imagenet_names() -> dict[str, str]:
    """wnid -> the first lemma (a readable class name)."""
    names = {}
    for line in timm_info("imagenet_synset_to_lemma.txt"):
        wnid, _, lemmas = line.partition("\t")
        names[wnid] = lemmas.split(",")[0].strip()
    return names


def _wnid_classes(wnids) -> tuple[DatasetClass, ...]:
    return tuple(DatasetClass(w, (w,)) for w in wnids)


def _zenodo(record: str, filename: str) -> str:
    return f"https://zenodo.org/records/{record}/files/{filename}?download=1"


IMAGENET_VAL_HOWTO = (
    "ImageNet-1K val needs your own ImageNet licence: download ILSVRC2012_img_val.tar and "
    "ILSVRC2012_devkit_t12.tar.gz from https://image-net.org/download-images.php into one folder, then run "
    "`rib data add imagenet PATH` (PATH: that folder or the val tar; the devkit's ground truth sorts the "
    "images into classes; or a folder already sorted into one folder per wnid)"
)
OBJECTNET_HOWTO = (
    "ObjectNet 1.0 is password-protected and its licence must be accepted (it forbids training on it; "
    "fine-tuning on ObjectNet is a choice you make under that licence): download objectnet-1.0.zip from "
    "https://objectnet.dev/download.html, unzip it with the password given there, then run "
    "`rib data add objectnet PATH` (PATH: the objectnet-1.0 folder)"
)

C_ARCHIVES = (
    Archive("blur.tar", (_zenodo("2235448", "blur.tar"),), md5="2d8e81fdd8e07fef67b9334fa635e45c"),
    Archive("digital.tar", (_zenodo("2235448", "digital.tar"),), md5="89157860d7b10d5797849337ca2e5c03"),
    Archive("noise.tar", (_zenodo("2235448", "noise.tar"),), md5="e80562d7f6c3f8834afb1ecf27252745"),
    Archive("weather.tar", (_zenodo("2235448", "weather.tar"),), md5="33ffea4db4d93fe4a428c40a6ce0c25d"),
)


@register_suite(SUITE)
def build_suite(params: dict | None = None) -> Suite:
    wnids = imagenet_wnids()
    every = _wnid_classes(wnids)
    datasets = {
        "imagenet": DatasetSpec(
            "imagenet", "source", "wnid_folders", "ImageNet-1K validation set (50,000 images)", every,
            source=Source(manual=IMAGENET_VAL_HOWTO, homepage="https://image-net.org", official_val=True),
            photos=VAL_PHOTOS),
        "v2": DatasetSpec(
            "v2", "shift", "index_folders", "ImageNet-V2 matched-frequency (10,000 images)",
            tuple(DatasetClass(str(i), (w,)) for i, w in enumerate(wnids)),
            source=Source((Archive(
                "imagenetv2-matched-frequency.tar.gz",
                ("https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz",
                 "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz"),
                size=1_264_079_360, sha256="f0c37fdf925916b19ea1323cd9a2208cdb6959ba2c32eef2a7fc393835c9ca7c"),),
                homepage="https://github.com/modestyachts/ImageNetV2")),
        "a": DatasetSpec(
            "a", "shift", "wnid_folders", "ImageNet-A: natural adversarial examples, 200 classes (7,500 images)",
            _wnid_classes(sorted(timm_info("imagenet_a_synsets.txt"))),
            source=Source((Archive(
                "imagenet-a.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",),
                size=687_552_512, sha256="3bb3632277e6ba6392ea64c02ddbf4dd2266c9caffd6bc09c9656d28f012589e"),),
                homepage="https://github.com/hendrycks/natural-adv-examples")),
        "r": DatasetSpec(
            "r", "shift", "wnid_folders", "ImageNet-R: renditions, 200 classes (30,000 images)",
            _wnid_classes(sorted(timm_info("imagenet_r_synsets.txt"))),
            source=Source((Archive(
                "imagenet-r.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",),
                size=2_191_079_936, sha256="18c6bf493b39a0d975d48e587437f562caab9c52ae6327dcfa9dd8eb54aa1b52"),),
                homepage="https://github.com/hendrycks/imagenet-r")),
        "sketch": DatasetSpec(
            "sketch", "shift", "wnid_folders", "ImageNet-Sketch (50,889 images)", every,
            source=Source((Archive(
                "ImageNet-Sketch.zip",
                ("https://huggingface.co/datasets/songweig/imagenet_sketch/resolve/main/data/ImageNet-Sketch.zip",),
                size=7_593_573_012, sha256="4d3ce6b82a7c48aabf14aeac105eb533e75707f152cc858f55bfc022031a72ed"),),
                homepage="https://github.com/HaohanWang/ImageNet-Sketch")),
        "objectnet": DatasetSpec(
            "objectnet", "shift", "mapped_folders", "ObjectNet 1.0, the 113 classes that overlap ImageNet-1K",
            None, border=2, expected_num_classes=113,
            source=Source(manual=OBJECTNET_HOWTO, homepage="https://objectnet.dev")),
        "cartoon": DatasetSpec(
            "cartoon", "shift", "wnid_folders", "ImageNet-Cartoon (50,000 images)", every,
            source=Source((Archive("imagenet-cartoon.tar.gz", (_zenodo("6801109", "imagenet-cartoon.tar.gz"),),
                                   md5="a4987ee6efda553299419f47e59a7274"),),
                          homepage="https://zenodo.org/records/6801109"), photos=VAL_PHOTOS),
        "drawing": DatasetSpec(
            "drawing", "shift", "wnid_folders", "ImageNet-Drawing (50,000 images)", every,
            source=Source((Archive("imagenet-drawing.tar.gz", (_zenodo("6801109", "imagenet-drawing.tar.gz"),),
                                   md5="3fb1206b6e3190d0159e5dc01c0f97ab"),),
                          homepage="https://zenodo.org/records/6801109"), photos=VAL_PHOTOS),
        "c": DatasetSpec(
            "c", "shift", "corruption_tree", "ImageNet-C: 15 corruptions x 5 severities of ImageNet val", every,
            corruptions=IMAGENET_C_CORRUPTIONS, severities=IMAGENET_C_SEVERITIES,
            source=Source(C_ARCHIVES, homepage="https://github.com/hendrycks/robustness"), photos=VAL_PHOTOS),
    }
    return Suite(name=SUITE, label_space=wnids, class_names=imagenet_names(), datasets=datasets,
                 class_map_version=CLASS_MAP_VERSION)
