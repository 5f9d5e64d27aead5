"""Drawing and writing the images of the rib-mini suite (see :mod:`rib.data.synthetic.suite`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ...io import atomic_dir
from ...progress import progress
from ..layouts import write_mapping
from ..suites import Suite
from .corruptions import CORRUPTIONS as CORRUPTION_FUNCTIONS
from .corruptions import corrupt
from .render import STYLES, to_uint8
from .shapes import SHAPES, ShapeClass, shape_classes
from .suite import (
    OBJECTNET_BORDER,
    OBJECTNET_UNMAPPED,
    C_POOL_FACTOR,
    CORPORA,
    CORRUPTIONS,
    DIVERSE_DEGRADE,
    DIVERSE_MIX,
    SEVERITIES,
    _stable_code,
    build_suite,
)

assert tuple(CORRUPTION_FUNCTIONS) == CORRUPTIONS, "corruptions.py and suite.py disagree on the corruption list"


def images_per_class(params: dict, dataset: str) -> int:
    syn = params["synthetic"]
    if dataset in CORPORA:
        return syn["corpora"][dataset]
    if dataset in ("source", "c"):
        return syn["images_per_class"][dataset]
    return syn["images_per_class"]["shift"]


def _render(style: str, shape: ShapeClass, size: int, rng: np.random.Generator) -> np.ndarray:
    return STYLES[style](rng, shape, size)


def _diverse_image(shape: ShapeClass, size: int, rng: np.random.Generator) -> np.ndarray:
    styles = list(DIVERSE_MIX)
    p = np.array([DIVERSE_MIX[s] for s in styles])
    style = styles[int(rng.choice(len(styles), p=p / p.sum()))]
    img = _render(style, shape, size, rng)
    if rng.uniform() < DIVERSE_DEGRADE:
        name = list(CORRUPTIONS)[int(rng.integers(len(CORRUPTIONS)))]
        img = corrupt(img, name, int(rng.integers(1, 3)), rng)
    return img


def _save(path: Path, img: np.ndarray) -> None:
    Image.fromarray(to_uint8(img)).save(path, format="PNG", compress_level=1)


def _jobs(suite: Suite, dataset: str, params: dict):
    """Yield (relative path, render function) for every image of the dataset."""
    spec = suite.dataset(dataset)
    shapes = {s.wnid: s for s in shape_classes(params["synthetic"]["num_classes"])}
    size = params["synthetic"]["image_size"]
    seed = params["seed"]
    n = images_per_class(params, dataset)
    code = _stable_code(dataset)
    if dataset == "c":
        for ci, cls in enumerate(spec.classes):
            yield from _corrupted_jobs(shapes[cls.wnids[0]], size, [seed, code, ci], cls.folder, n)
        return
    if dataset == "objectnet":
        yield from _objectnet_jobs(spec, params, shapes, size, [seed, code], n)
        return
    for ci, cls in enumerate(spec.classes):
        for i in range(n):
            shape = shapes[cls.wnids[0]]
            rng_key = [seed, code, ci, i]
            rel = f"{cls.folder}/{cls.folder}_{i:05d}.png"
            if dataset == "diverse":
                yield rel, (lambda s=shape, k=rng_key: _diverse_image(s, size, np.random.default_rng(k)))
            else:
                style = "source" if dataset in ("source", "narrow") else dataset
                yield rel, (lambda s=shape, k=rng_key, st=style: _render(st, s, size, np.random.default_rng(k)))


def _framed(img: np.ndarray) -> np.ndarray:
    """ObjectNet's images carry a thin red frame (2 pixels at full size, 1 here), cropped when loading."""
    out = img.copy()
    b = OBJECTNET_BORDER
    red = np.array([0.85, 0.05, 0.05], np.float32)
    out[:b], out[-b:], out[:, :b], out[:, -b:] = red, red, red, red
    return out


def _objectnet_jobs(spec, params, shapes, size, key, n):
    # A merged class shows each of its label-space classes in turn. Shapes outside the label space
    # (when there are any) get folders too, as ObjectNet's 200 classes without an ImageNet
    # counterpart do; the mapping files leave them out.
    outside = [s for s in SHAPES if s.wnid not in shapes][:OBJECTNET_UNMAPPED]
    folders = [(c.folder, [shapes[w] for w in c.wnids]) for c in spec.classes]
    folders += [(s.name.replace(" ", "_"), [s]) for s in outside]
    for ci, (folder, members) in enumerate(folders):
        for i in range(n):
            shape = members[i % len(members)]
            rng_key = key + [ci, i]
            rel = f"images/{folder}/{folder}_{i:05d}.png"
            yield rel, (lambda s=shape, k=rng_key: _framed(_render("objectnet", s, size, np.random.default_rng(k))))


def _corrupted_jobs(shape, size, class_key, folder, per_leaf):
    """ImageNet-C leaves of one class: each picks ``per_leaf`` base images from a pool of
    ``C_POOL_FACTOR * per_leaf``; a base image has the same file name wherever it appears."""
    cache: dict[int, np.ndarray] = {}

    def base(b: int) -> np.ndarray:
        if b not in cache:
            cache[b] = _render("source", shape, size, np.random.default_rng(class_key + [b]))
        return cache[b]

    pool = C_POOL_FACTOR * per_leaf
    for k, name in enumerate(CORRUPTIONS):
        for sev in SEVERITIES:
            picks = np.random.default_rng(class_key + [pool, k, sev]).choice(pool, size=per_leaf, replace=False)
            for b in sorted(int(x) for x in picks):
                rel = f"{name}/{sev}/{folder}/{folder}_{b:05d}.png"
                key = class_key + [b, k, sev]
                yield rel, (lambda n=name, s=sev, kk=key, bb=b: corrupt(base(bb), n, s, np.random.default_rng(kk)))


def generate(params: dict, dataset: str, out_dir: str | os.PathLike, show_progress: bool = True) -> int:
    """Write one dataset of the suite under ``out_dir`` atomically; returns the number of images."""
    suite: Suite = build_suite(params)
    spec = suite.dataset(dataset)
    jobs = list(_jobs(suite, dataset, params))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        made = set()
        for rel, render in progress(jobs, desc=f"generate {dataset}", unit="img", enabled=show_progress):
            path = tmp / rel
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            _save(path, render())
        if spec.layout == "mapped_folders":
            mapped = {c.folder for c in spec.classes}
            extra = sorted({rel.split("/")[1] for rel, _ in jobs} - mapped)
            write_mapping(tmp, spec.classes, suite.class_names, suite.label_space,
                          {f: f.replace("_", " ").title() for f in extra})
    return len(jobs)
