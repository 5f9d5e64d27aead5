"""The leak-free protocol (split.leak_free): datasets that render the same photos (ImageNet val, -C,
-Cartoon, -Drawing keep the val photos' file names) are split by photo, the same way in each, and a
cell fine-tuned on one of them is scored on the family's held-out photos only, before and after."""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rib.aggregate import metrics_table, photo_families, summary_table
from rib.config import load
from rib.data.manifest import load_prepared, prepare
from rib.data.suites import get_suite
from rib.evaluate import cell_record
from tests.conftest import REPO

FAMILY = ("imagenet", "cartoon", "drawing", "c")  # imagenet-rib: the val photos and three renditions
PHOTOS_PER_CLASS = 12


def _write(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path, format="JPEG")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """The four datasets of the ImageNet val family, small, in their real layouts and file names:
    val and Cartoon with every photo, Drawing with some, C (two corruptions x two severities) with
    five per class in every leaf; plus Sketch, which shares the names but is no rendition."""
    root = tmp_path_factory.mktemp("family")
    params = load(REPO / "configs" / "imagenet-rib.yaml")
    suite = get_suite(params)
    classes = suite.dataset("imagenet").classes[:3]
    rng = np.random.default_rng(0)
    photos = {c.folder: [f"ILSVRC2012_val_{100 * i + k:08d}.JPEG" for k in range(PHOTOS_PER_CLASS)]
              for i, c in enumerate(classes)}
    for name in ("imagenet", "cartoon", "sketch"):
        for folder, names in photos.items():
            for photo in names:
                _write(root / "raw" / name / folder / photo, rng)
    for folder, names in photos.items():
        for photo in names[::3]:
            _write(root / "raw" / "drawing" / folder / photo, rng)
        for corruption in ("gaussian_noise", "fog"):
            for severity in (1, 2):
                for photo in names[1:6]:
                    _write(root / "raw" / "c" / corruption / str(severity) / folder / photo, rng)
    prepared = {}
    for name in (*FAMILY, "sketch"):
        spec = dataclasses.replace(suite.dataset(name), classes=classes, corruptions=("gaussian_noise", "fog"),
                                   severities=(1, 2))
        prepare(spec, root / "raw" / name, root / "prepared" / name, label_space=suite.label_space, fraction=0.5,
                seed=0, by_photo=True, show_progress=False)
        prepared[name] = load_prepared(root / "prepared" / name)
    return prepared


def _photo(row) -> str:
    return PurePosixPath(row.path).stem


def test_a_photo_is_on_the_same_side_of_the_split_in_every_rendition(family):
    side: dict[str, str] = {}
    for name in FAMILY:
        ds = family[name]
        assert ds.info["split"]["by_photo"] == "imagenet-val"
        parts = {r.part for r in ds.rows}
        assert parts == {"finetune", "heldout"}, f"{name}: {parts}"
        for row in ds.rows:
            assert side.setdefault(_photo(row), row.part) == row.part, f"{name}: {row.path} on the other side"
    assert len(side) == 3 * PHOTOS_PER_CLASS
    held = sum(p == "heldout" for p in side.values()) / len(side)
    assert 0.25 < held < 0.75  # about heldout_fraction
    # Sketch is another collection: split as always (stratified, per dataset), whatever its names.
    assert family["sketch"].info["split"]["by_photo"] is None


def test_no_photo_a_cell_was_fine_tuned_on_is_scored_by_the_leak_free_protocol(family):
    """A model that is right exactly on the photos it was fine-tuned on: the paper's protocol credits
    it on the other renditions (the leak), the leak-free protocol gives it nothing."""
    families = {name: "imagenet-val" for name in FAMILY}
    rows = []
    for dft in ("cartoon", "drawing", "c"):
        trained = {_photo(r) for r in family[dft].select("finetune")}
        assert trained
        for name in FAMILY:
            ds = family[name]
            memorised = torch.tensor([_photo(r) in trained for r in ds.rows])
            for method, finetuned_on, correct in (("pretrained", None, torch.zeros_like(memorised)),
                                                  ("ft", dft, memorised)):
                rec = cell_record(ds, correct, finetuned_on)
                rows.append({"model": "m", "method": method, "finetune_dataset": finetuned_on or "",
                             "eval_dataset": name, "top1": rec["top1"],
                             "heldout_top1": rec["subsets"]["heldout"]["top1"],
                             "role": "source" if name == "imagenet" else ("finetune" if name == dft else "ood")})
    cells = pd.DataFrame(rows).drop_duplicates(["method", "finetune_dataset", "eval_dataset"])
    table = metrics_table(cells, families)
    assert table.shares_photos.all()
    assert (table.acc_ft_leak_free == 0).all()  # no trained photo is scored
    leaked = table[table.role != "finetune"]
    assert (leaked.acc_ft > 0).all()  # while the paper's protocol scores them
    summary = summary_table(table).set_index("finetune_dataset")
    assert (summary.mri > 0).all() and (summary.mri_leak_free == 0).all()
    assert (summary.source_ft > 0).all() and (summary.source_ft_leak_free == 0).all()
    # Without the families (leak_free off) the table has the paper's columns only.
    assert "mri_leak_free" not in summary_table(metrics_table(cells)).columns


def test_the_families_come_from_the_suite_and_the_setting():
    params = load(REPO / "configs" / "imagenet-rib.yaml")
    assert params["split"]["leak_free"] is False and photo_families(params) is None
    params["split"]["leak_free"] = True
    assert photo_families(params) == {name: "imagenet-val" for name in FAMILY}
    mini = load(REPO / "params.yaml")
    assert mini["split"]["leak_free"] is True
    assert set(photo_families(mini)) == {"source", "cartoon", "drawing", "c"}
