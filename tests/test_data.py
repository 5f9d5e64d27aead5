"""Preparing datasets: index, verify, held-out split; label projection; clear errors on bad data."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict

import pytest
import torch

from rib.data.labels import LabelProjection
from rib.data.layouts import LayoutError
from rib.data.manifest import DataError, load_prepared, prepare, split_parts
from rib.data.suites import DatasetClass, get_suite


def test_split_is_stratified_deterministic_and_disjoint():
    labels = [k for k in range(3) for _ in range(10)]
    instances = [f"img{i}" for i in range(30)]
    parts = split_parts(labels, instances, 0.3, seed=5, salt="x")
    assert parts == split_parts(labels, instances, 0.3, seed=5, salt="x")
    assert parts != split_parts(labels, instances, 0.3, seed=6, salt="x")
    per_class = Counter(lab for lab, p in zip(labels, parts) if p == "heldout")
    assert per_class == {0: 3, 1: 3, 2: 3}


def test_split_keeps_an_instance_on_one_side():
    # ImageNet-C: the same base image under 75 corruptions is one instance
    labels = [0] * 40
    instances = [f"base{i % 4}" for i in range(40)]
    parts = split_parts(labels, instances, 0.5, seed=0)
    side = defaultdict(set)
    for inst, p in zip(instances, parts):
        side[inst].add(p)
    assert all(len(s) == 1 for s in side.values())
    assert Counter(parts) == {"heldout": 20, "finetune": 20}


def test_split_leaves_both_sides_non_empty():
    parts = split_parts([0, 0, 1, 1], ["a", "b", "c", "d"], 0.99, seed=0)
    assert Counter(parts) == {"heldout": 2, "finetune": 2}


def test_prepared_folders(in_tiny_suite):
    root, params = in_tiny_suite
    c = load_prepared("data/rib-mini/prepared/c")
    n_base = params["synthetic"]["num_classes"] * params["synthetic"]["images_per_class"]["c"]
    assert len(c.rows) == n_base * 75
    assert len(c.groups) == 75 and c.groups[0] == "brightness/1"
    heldout_instances = {r.instance for r in c.rows if r.part == "heldout"}
    finetune_instances = {r.instance for r in c.rows if r.part == "finetune"}
    assert heldout_instances and finetune_instances and not heldout_instances & finetune_instances
    corpus = load_prepared("data/rib-mini/corpora/prepared/narrow")
    assert {r.part for r in corpus.rows} == {"train"}
    # every row's label is the index of its folder's class
    sketch = load_prepared("data/rib-mini/prepared/sketch")
    for row in sketch.rows:
        assert sketch.classes[row.label].folder == row.folder == row.path.split("/")[0]


def test_manifest_digest_is_checked(in_tiny_suite, tmp_path):
    copy = tmp_path / "sketch"
    shutil.copytree("data/rib-mini/prepared/sketch", copy)
    with open(copy / "manifest.csv", "a") as fh:
        fh.write("extra/row.png,0,x,,x,finetune\n")
    with pytest.raises(DataError, match="manifest.csv: digest .* does not match info.json"):
        load_prepared(copy)


def _copy_raw(name: str, tmp_path):
    dst = tmp_path / name
    shutil.copytree(f"data/rib-mini/raw/{name}", dst)
    return dst


def _prepare(params, spec, raw, out):
    return prepare(spec, raw, out, label_space=get_suite(params).label_space, fraction=0.5, seed=0,
                   show_progress=False)


def test_missing_empty_and_unexpected_class_folders(in_tiny_suite, tmp_path):
    root, params = in_tiny_suite
    spec = get_suite(params).dataset("sketch")
    raw = _copy_raw("sketch", tmp_path)
    first = sorted(p for p in raw.iterdir())[0]
    for f in first.iterdir():
        f.unlink()
    with pytest.raises(LayoutError, match=f"{first.name}: class folder has no images"):
        _prepare(params, spec, raw, tmp_path / "out")
    shutil.rmtree(first)
    with pytest.raises(LayoutError, match=f"missing class folder '{first.name}'"):
        _prepare(params, spec, raw, tmp_path / "out")
    (raw / first.name).mkdir()
    (raw / "stray").mkdir()
    with pytest.raises(LayoutError, match="unexpected class folder 'stray'"):
        _prepare(params, spec, raw, tmp_path / "out")
    with pytest.raises(LayoutError, match="dataset folder not found"):
        _prepare(params, spec, tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_image_is_named_and_nothing_is_written(in_tiny_suite, tmp_path):
    root, params = in_tiny_suite
    raw = _copy_raw("sketch", tmp_path)
    victim = sorted(raw.rglob("*.png"))[3]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(DataError, match=f"{victim}: not a readable image"):
        _prepare(params, get_suite(params).dataset("sketch"), raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no partial folder left


def test_projection_restricts_and_merges():
    space = ["w0", "w1", "w2", "w3"]
    classes = [DatasetClass("round", ("w0", "w2")), DatasetClass("three", ("w3",))]
    proj = LabelProjection(classes, space)
    logits = torch.tensor([[5.0, 9.0, 1.0, 2.0],   # best overall is w1, outside the dataset
                           [0.0, 0.0, 3.0, 1.0]])
    assert torch.equal(proj.restrict(logits), torch.tensor([[5.0, 2.0], [3.0, 1.0]]))
    labels = torch.tensor([0, 0])
    assert proj.correct(logits, labels, "restricted").tolist() == [True, True]
    assert proj.correct(logits, labels, "full").tolist() == [False, True]  # w1 wins the 4-way argmax
    with pytest.raises(ValueError, match="not in the model's label space"):
        LabelProjection([DatasetClass("x", ("w9",))], space)


def test_identity_projection_is_a_no_op():
    proj = LabelProjection([DatasetClass(w, (w,)) for w in "abc"], list("abc"))
    logits = torch.randn(2, 3)
    assert proj.restrict(logits) is logits


def test_skipped_images_are_counted_in_every_cell(in_tiny_suite, tiny_pretrained, tmp_path):
    from rib.cli import main

    root, params = in_tiny_suite
    raw = _copy_raw("sketch", tmp_path)
    sorted(raw.rglob("*.png"))[0].write_bytes(b"broken")
    prepared = tmp_path / "prepared" / "sketch"
    prepare(get_suite(params).dataset("sketch"), raw, prepared, label_space=get_suite(params).label_space,
            fraction=0.5, seed=0, skip_corrupt=True, show_progress=False)
    assert main(["evaluate", str(tiny_pretrained), str(prepared), "--out-dir", str(tmp_path / "cells"), "-q"]) == 0
    cell = json.loads((tmp_path / "cells" / "sketch.json").read_text())
    assert cell["skipped_images"] == 1
    assert cell["subsets"]["all"]["n"] == len(list(raw.rglob("*.png"))) - 1
