"""The rib-mini generator: deterministic, in the real datasets' layouts, class-balanced, style-shifted."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rib.data.layouts import read_mapping
from rib.data.suites import get_suite
from rib.data.synthetic.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from rib.data.synthetic.generate import generate
from rib.data.synthetic.render import STYLES, Placement, coverage
from rib.data.synthetic.shapes import SHAPES, shape_classes
from rib.data.synthetic.suite import C_POOL_FACTOR


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_seeded(tmp_path, tiny_params):
    generate(tiny_params, "r", tmp_path / "a", show_progress=False)
    generate(tiny_params, "r", tmp_path / "b", show_progress=False)
    first, second = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert first == second and len(first) > 0
    tiny_params["seed"] = 1
    generate(tiny_params, "r", tmp_path / "c", show_progress=False)
    assert tree_digest(tmp_path / "c") != first


def test_datasets_use_the_real_layouts(tiny_suite):
    root, params = tiny_suite
    raw = root / "data" / "rib-mini" / "raw"
    n_classes = params["synthetic"]["num_classes"]
    # source: ImageNet val layout, one wnid folder per class of the label space
    assert sorted(p.name for p in (raw / "source").iterdir()) == [s.wnid for s in shape_classes(n_classes)]
    # ImageNet-C: <corruption>/<severity>/<wnid>/<image>, the same number of images in every leaf,
    # and base images that reappear under the same file name in other leaves
    c = raw / "c"
    per_leaf = params["synthetic"]["images_per_class"]["c"]
    assert sorted(p.name for p in c.iterdir()) == sorted(CORRUPTIONS)
    for corruption in CORRUPTIONS:
        assert sorted(p.name for p in (c / corruption).iterdir()) == [str(s) for s in SEVERITIES]
        for severity in SEVERITIES:
            counts = Counter(p.parent.name for p in (c / corruption / str(severity)).rglob("*.png"))
            assert set(counts.values()) == {per_leaf} and len(counts) == n_classes
    uses = Counter(p.relative_to(c).parts[2:] for p in c.rglob("*.png"))
    assert max(uses.values()) > 1  # a base image appears in several leaves
    assert len(uses) <= n_classes * per_leaf * C_POOL_FACTOR  # drawn from a pool per class


def test_v2_and_objectnet_layouts(tmp_path, tiny_params):
    tiny_params["synthetic"]["num_classes"] = 10
    generate(tiny_params, "v2", tmp_path / "v2", show_progress=False)
    assert sorted(int(p.name) for p in (tmp_path / "v2").iterdir()) == list(range(10))  # numeric folders
    generate(tiny_params, "objectnet", tmp_path / "on", show_progress=False)
    suite = get_suite(tiny_params)
    # ObjectNet's own mapping files, read by the same parser as the real dataset's
    classes = {c.folder: c.wnids for c in read_mapping(tmp_path / "on", suite.label_space)}
    folders = sorted(p.name for p in (tmp_path / "on" / "images").iterdir())
    # one folder stands for two label-space classes; folders of shapes outside the label space are unmapped
    assert classes["round_object"] == ("n99000001", "n99000006")
    assert 2 <= len(classes) < 10 and set(classes) < set(folders) and len(folders) == len(classes) + 2
    # the thin red frame that loading crops
    with Image.open(next((tmp_path / "on" / "images" / "round_object").iterdir())) as im:
        assert im.getpixel((0, 0))[0] > 200 and im.getpixel((0, 0))[1] < 30


def test_class_balance_and_subsets(tmp_path, tiny_params):
    tiny_params["synthetic"]["num_classes"] = 10
    suite = get_suite(tiny_params)
    for name in ("a", "r", "sketch"):
        out = tmp_path / name
        generate(tiny_params, name, out, show_progress=False)
        counts = Counter(p.parent.name for p in out.rglob("*.png"))
        assert set(counts.values()) == {tiny_params["synthetic"]["images_per_class"]["shift"]}
        assert len(counts) == len(suite.dataset(name).classes)
    # A and R cover a subset of the label space (as the 200-class ImageNet-A/R do), not the same one
    a = {c.folder for c in suite.dataset("a").classes}
    r = {c.folder for c in suite.dataset("r").classes}
    assert len(a) == len(r) == 8 and a != r


def test_styles_keep_the_shape_and_change_the_look():
    shape = SHAPES[3]
    images = {name: style(np.random.default_rng(1), shape, 32) for name, style in STYLES.items()}
    for name, img in images.items():
        assert img.shape == (32, 32, 3) and img.dtype == np.float32, name
        assert 0.0 <= img.min() and img.max() <= 1.0, name
    # sketches are mostly white paper; drawings are grey (no colour); cartoons are flat (few colours)
    assert images["sketch"].mean() > 0.75
    assert np.abs(images["drawing"] - images["drawing"].mean(axis=2, keepdims=True)).max() < 1e-6
    assert len(np.unique((images["cartoon"] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) < \
        len(np.unique((images["source"] * 255).astype(np.uint8).reshape(-1, 3), axis=0))


def test_every_class_has_a_distinct_silhouette():
    place = Placement(scale=0.8, rotation=0.0, center=(0.0, 0.0))
    masks = [coverage(s, place, 32) > 0.5 for s in SHAPES]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).sum() > 20, (SHAPES[i].name, SHAPES[j].name)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_degrade_more_with_severity(name):
    clean = STYLES["source"](np.random.default_rng(3), SHAPES[0], 32)
    dist = []
    for severity in SEVERITIES:
        out = corrupt(clean, name, severity, np.random.default_rng(7))
        assert out.shape == clean.shape and out.min() >= 0 and out.max() <= 1
        dist.append(float(np.abs(out - clean).mean()))
    assert dist[0] > 0, name
    assert dist[-1] > dist[0], (name, dist)


def test_images_are_readable_pngs_of_the_configured_size(tiny_suite):
    root, params = tiny_suite
    some = next((root / "data" / "rib-mini" / "raw" / "sketch").rglob("*.png"))
    with Image.open(some) as im:
        size = params["synthetic"]["image_size"]
        assert im.format == "PNG" and im.size == (size, size) and im.mode == "RGB"
