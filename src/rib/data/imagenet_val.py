"""ImageNet-1K val from its official files, sorted by torchvision's own parser.

A user with an ImageNet licence has ``ILSVRC2012_img_val.tar`` (50,000 JPEGs in one flat folder)
and ``ILSVRC2012_devkit_t12.tar.gz`` (the class list and the ground truth of every val image).
``torchvision.datasets.imagenet`` reads exactly these files: ``parse_devkit_archive`` turns the
devkit into the wnid of every val image (leaf synsets only, in ILSVRC2012 id order) and
``parse_val_archive`` unpacks the tar and moves each image into its wnid's folder. Both first check
the archive's md5 against the official one. rib calls them rather than parsing the files itself.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import RibError

VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"


def official_files(path: str | os.PathLike) -> tuple[Path, Path] | None:
    """(val tar, devkit) when ``path`` is the official val tar or a folder holding it; None for
    anything else (a folder already sorted into wnid folders, another archive). The devkit must lie
    beside the tar."""
    path = Path(path)
    val = path / VAL_TAR if path.is_dir() else path
    if val.name != VAL_TAR or not val.is_file():
        return None
    devkit = val.parent / DEVKIT
    if not devkit.is_file():
        raise RibError(f"{devkit}: not found; the official {VAL_TAR} is sorted into classes by the devkit's ground "
                       f"truth: put {DEVKIT} (from the same ImageNet download page) beside it")
    return val, devkit


def sort_into_classes(val: Path, devkit: Path, out: str | os.PathLike) -> int:
    """Unpack the official val tar into ``out`` (an empty folder), one folder per wnid; returns the
    number of images. A file whose md5 is not the official one, or a tar that does not hold one
    image per ground-truth line, is a one-line error naming the file."""
    from torchvision.datasets import imagenet as tv

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=".imagenet-devkit-", dir=out.parent) as root:
        for src in (val, devkit):  # torchvision reads both from one root folder
            os.symlink(src.resolve(), Path(root) / src.name)
        try:
            tv.parse_devkit_archive(root)
        except RuntimeError:
            raise RibError(f"{devkit}: not the official ImageNet 2012 devkit (its md5 is not "
                           f"{tv.ARCHIVE_META['devkit'][1]})") from None
        wnids = tv.load_meta_file(root)[1]
        try:
            tv.parse_val_archive(root, wnids=wnids, folder=str(out.resolve()))
        except RuntimeError:
            raise RibError(f"{val}: not the official ImageNet 2012 val images (its md5 is not "
                           f"{tv.ARCHIVE_META['val'][1]})") from None
    left = [e.name for e in os.scandir(out) if e.is_file()]
    if left:
        raise RibError(f"{val}: {len(left)} image(s) without a ground-truth label in {devkit} (e.g. {left[0]})")
    sorted_images = sum(len(os.listdir(out / w)) for w in set(wnids))
    if sorted_images != len(wnids):
        raise RibError(f"{val}: {sorted_images} images for the {len(wnids)} ground-truth labels of {devkit}")
    return sorted_images
