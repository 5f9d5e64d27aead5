"""The evaluation engine: automatic batch size under memory pressure, channels-last, same answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rib.data.manifest import load_prepared
from rib.errors import RibError
from rib.evaluate import predict
from rib.models import network


class _Fits(nn.Module):
    """A model that runs out of (GPU) memory above ``limit`` images per batch."""

    def __init__(self, model: nn.Module, limit: int):
        super().__init__()
        self.model, self.limit, self.sizes = model, limit, []

    def forward(self, x):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(x)


def _predict(model, ckpt, prepared, **kw):
    return predict(model, prepared, ckpt.label_space, ckpt.preprocessing, scoring="restricted",
                   device=torch.device("cpu"), show_progress=False, **kw)


def test_auto_batch_size_backs_off_until_it_fits(in_tiny_suite, tiny_pretrained):
    ckpt = network.load(tiny_pretrained)
    prepared = load_prepared("data/rib-mini/prepared/c")  # 120 images
    reference = _predict(ckpt.model, ckpt, prepared, batch_size=16)
    small = _Fits(ckpt.model, limit=20)
    assert torch.equal(_predict(small, ckpt, prepared, batch_size="auto"), reference)
    assert max(s for s in small.sizes if s <= 20) == 16  # 64 -> 32 -> 16
    small.sizes.clear()
    _predict(small, ckpt, prepared, batch_size="auto")  # the next dataset starts at the size that fitted
    assert max(small.sizes) == 16
    with pytest.raises(RibError, match="at batch size 64 ran out of GPU memory: lower evaluate.batch_size"):
        _predict(_Fits(ckpt.model, limit=20), ckpt, prepared, batch_size=64)


def test_channels_last_gives_the_same_predictions(in_tiny_suite, tiny_pretrained):
    ckpt = network.load(tiny_pretrained)
    prepared = load_prepared("data/rib-mini/prepared/sketch")
    plain = _predict(ckpt.model, ckpt, prepared, batch_size=8)
    cl = _predict(network.load(tiny_pretrained).model, ckpt, prepared, batch_size=8,
                  engine={"channels_last": True})
    assert torch.equal(plain, cl)


def test_device_decoding_is_close_to_the_pil_path(tmp_path):
    """runtime.gpu_decode's path (run here on the CPU): JPEGs through torchvision.io.decode_jpeg,
    the rest through PIL, resized in torch: within a few grey levels of load_image."""
    import io

    import numpy as np
    from PIL import Image

    from rib.data.loading import decode_on_device, load_image
    from rib.data.manifest import DataError
    from rib.models.registry import Preprocessing

    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((10, 10, 1))).astype(np.uint8)  # 120 x 160
    paths = []
    for name, fmt in (("a.jpg", "JPEG"), ("b.png", "PNG")):
        buf = io.BytesIO()
        Image.fromarray(base).save(buf, fmt, quality=95)
        (tmp_path / name).write_bytes(buf.getvalue())
        paths.append(tmp_path / name)
    prep = Preprocessing(64, "bilinear", 0.875)
    blobs = [p.read_bytes() for p in paths]
    out = decode_on_device(blobs, prep, torch.device("cpu"), paths=paths)
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.uint8
    for k, path in enumerate(paths):
        ref = load_image(path, prep).int()
        assert (out[k].int() - ref).abs().float().mean() < 3.0
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        decode_on_device([b"not an image"], prep, torch.device("cpu"), paths=[tmp_path / "bad.png"])


def test_full_scoring_through_rib_evaluate(in_tiny_suite, tiny_vit, tmp_path):
    """evaluate.scoring: full takes the argmax over the whole label space; restricted (the default)
    over the dataset's classes only. Wherever full is right, restricted is too, never the other way."""
    import json

    import yaml

    from rib.cli import main

    root, params = in_tiny_suite
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump({**params, "evaluate": {**params["evaluate"], "scoring": "full"}}))
    assert main(["evaluate", tiny_vit, "--out-dir", str(tmp_path / "restricted"), "-q"]) == 0
    assert main(["--params", str(full), "evaluate", tiny_vit, "--out-dir", str(tmp_path / "full"), "-q"]) == 0
    for name in ("source", "sketch", "c"):
        a = json.loads((tmp_path / "restricted" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "full" / f"{name}.json").read_text())
        assert (a["scoring"], b["scoring"]) == ("restricted", "full")
        assert b["top1"] <= a["top1"], name
