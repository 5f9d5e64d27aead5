"""The preprocessed-image cache: the same pixels as decoding, the same numbers, damage detected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rib.cli import main
from rib.data import cache
from rib.data.loading import CachedDataset, batches, load_image, open_dataset
from rib.data.manifest import DataError, load_prepared
from rib.errors import DamagedFileError
from rib.models import network
from rib.models.registry import Preprocessing

PREP = Preprocessing(32)
KEY = "v2-32px-bilinear-crop1-center"


def _build(root: Path, dataset: str, shard_size: int = 7) -> Path:
    out = root / "cache" / KEY / dataset
    cache.build(load_prepared(f"data/rib-mini/prepared/{dataset}"), PREP, out, shard_size=shard_size,
                show_progress=False)
    return out


def test_key_round_trip():
    prep = Preprocessing(224, "bicubic", 0.875)
    assert cache.prep_key(prep) == "v2-224px-bicubic-crop0.875-center"
    assert cache.prep_from_key("v2-224px-bicubic-crop0.875-center") == Preprocessing(224, "bicubic", 0.875)
    with pytest.raises(DataError, match="not a preprocessing key"):
        cache.prep_from_key("224-bicubic")
    with pytest.raises(DataError, match="an earlier pixel rule"):  # the key of version 1
        cache.prep_from_key("224px-bicubic-crop0.875")


def test_cached_pixels_are_the_decoded_ones_in_any_order(in_tiny_suite, tmp_path):
    prepared = load_prepared("data/rib-mini/prepared/sketch")
    folder = _build(tmp_path, "sketch", shard_size=7)  # several shards, a short last one
    info = json.loads((folder / "info.json").read_text())
    rows = len(prepared.rows)  # 80 in the tiny suite
    assert [s["rows"] for s in info["shards"]] == [7] * (rows // 7) + [rows % 7] and rows % 7
    opened = cache.open_cache(folder, prepared, PREP, verify=True)
    decoded = torch.stack([load_image(prepared.root / r.path, PREP, prepared.border) for r in prepared.rows])
    assert torch.equal(opened.read(np.arange(len(prepared.rows))[:7]), decoded[:7])  # one slice of one shard
    order = np.random.default_rng(0).permutation(len(prepared.rows))  # across shards, any order
    assert torch.equal(opened.read(order), decoded[order])
    data = open_dataset(prepared, "heldout", PREP, preload_images=False, cache=opened)
    assert isinstance(data, CachedDataset)
    held = [i for i, r in enumerate(prepared.rows) if r.part == "heldout"]
    got = torch.cat([images for images, _ in batches(data, torch.arange(len(data)), 5)])
    assert torch.equal(got, decoded[held])


def test_damage_is_detected(in_tiny_suite, tmp_path):
    prepared = load_prepared("data/rib-mini/prepared/sketch")
    folder = _build(tmp_path, "sketch")
    shard = folder / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit: same size, wrong digest
    shard.write_bytes(bytes(data))
    opened = cache.open_cache(folder, prepared, PREP)  # the structural check passes ...
    with pytest.raises(DamagedFileError, match="shard-00001.npy: cache shard does not match the digest"):
        cache.open_cache(folder, prepared, PREP, verify=True)  # ... the digest does not
    opened.read(np.arange(opened.shard_size - 2, opened.shard_size))  # shard 0 is intact and reads
    with pytest.raises(DamagedFileError, match="shard-00001.npy: cache shard does not match the digest") as err:
        opened.read(np.arange(opened.shard_size, opened.shard_size + 3))  # never read as if valid
    assert err.value.path == folder  # the whole cache is moved aside and rebuilt
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(DamagedFileError, match="shard-00001.npy: missing or truncated cache shard"):
        cache.open_cache(folder, prepared, PREP)
    with pytest.raises(DataError, match=f"cached at {KEY}, but the model wants v2-64px-bilinear-crop1-center"):
        cache.open_cache(folder, prepared, Preprocessing(64))
    with pytest.raises(DataError, match="cache of 'sketch' with another manifest"):
        cache.open_cache(folder, load_prepared("data/rib-mini/prepared/c"), PREP)


def test_a_failed_build_leaves_no_cache(in_tiny_suite, tmp_path, monkeypatch):
    prepared = load_prepared("data/rib-mini/prepared/sketch")

    def broken(*_args, **_kw):
        raise DataError("image 3 is not an image")

    monkeypatch.setattr("rib.data.loading.load_image", broken)
    with pytest.raises(DataError):
        cache.build(prepared, PREP, tmp_path / "cache" / KEY / "sketch", show_progress=False)
    assert not (tmp_path / "cache" / KEY / "sketch").exists()
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "cache" / KEY).iterdir())


def test_evaluation_and_finetuning_give_the_same_numbers_with_the_cache(in_tiny_suite, tiny_pretrained, tmp_path):
    folders = [str(_build(tmp_path, d)) for d in ("source", "sketch", "c")]
    base = ["finetune", "mini_resnet.narrow", "ft", "sketch", "--pretrained", str(tiny_pretrained),
            "--data", "data/rib-mini/prepared/sketch", "-q"]
    assert main([*base, "--out", str(tmp_path / "plain" / "model.pt")]) == 0
    assert main([*base, "--out", str(tmp_path / "cached" / "model.pt"), "--cache", folders[1]]) == 0
    a = network.load(tmp_path / "plain" / "model.pt").model.state_dict()
    b = network.load(tmp_path / "cached" / "model.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    ckpt = str(tmp_path / "plain" / "model.pt")
    assert main(["evaluate", ckpt, "--out-dir", str(tmp_path / "cells-plain"), "-q"]) == 0
    assert main(["evaluate", ckpt, "--out-dir", str(tmp_path / "cells-cached"), "--cache", *folders, "-q"]) == 0
    for name in ("source.json", "sketch.json", "c.json"):
        plain = json.loads((tmp_path / "cells-plain" / name).read_text())
        cached = json.loads((tmp_path / "cells-cached" / name).read_text())
        assert plain["subsets"] == cached["subsets"], name


def test_cli_builds_and_verifies(in_tiny_suite, tmp_path, capsys):
    out = str(tmp_path / "cache" / KEY / "c")
    args = ["c", "--data", "data/rib-mini/prepared/c", "--prep", KEY, "--out", out, "-q"]
    assert main(["cache", "build", *args]) == 0
    assert main(["cache", "verify", *args]) == 0
    assert "valid (" in capsys.readouterr().out
    assert main(["cache", "build", "sketch", *args[1:]]) == 2  # the folder holds c, not sketch
