"""Evaluation throughput of `rib evaluate`'s code path against the model's forward pass alone.

One process, one model, one batch size, one device: a dataset of JPEG photos (decoding and
resizing cost what they cost on real data) is evaluated

* forward-only: uint8 tensors already in memory -> normalise -> model -> scoring (the ceiling);
* end to end from the preprocessed cache (rib.data.cache, what the pipeline does);
* end to end without a cache: decoding every image (runtime.preload: true, the rib-mini default),
  and streaming through DataLoader workers (runtime.preload: false);

and prints images per second and each end-to-end figure as a fraction of forward-only.

    python benchmarks/eval_throughput.py [--images 3000] [--source-size 256] [--input-size 64]
                                         [--arch mini_resnet] [--batch 64] [--threads 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def make_dataset(root: Path, images: int, source_size: int) -> Path:
    """rib-mini's sketch dataset at ``source_size`` px, re-encoded as JPEG (quality 90), prepared."""
    import yaml
    from PIL import Image

    from rib import grid
    from rib.data.manifest import prepare
    from rib.data.suites import get_suite
    from rib.data.synthetic.generate import generate

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    per_class = max(1, images // params["synthetic"]["num_classes"])
    params["synthetic"].update(image_size=source_size, images_per_class={**params["synthetic"]["images_per_class"],
                                                                         "shift": per_class})
    os.chdir(root)
    raw = grid.data_dir(params, "sketch", "raw")
    generate(params, "sketch", raw, show_progress=False)
    for path in Path(raw).rglob("*.png"):  # same names, JPEG content: PIL reads by content
        buf = io.BytesIO()
        with Image.open(path) as im:
            im.convert("RGB").save(buf, "JPEG", quality=90)
        path.write_bytes(buf.getvalue())
    suite = get_suite(params)
    out = grid.data_dir(params, "sketch")
    prepare(suite.dataset("sketch"), raw, out, label_space=suite.label_space, fraction=0.5, seed=0,
            show_progress=False)
    return Path(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--source-size", type=int, default=256, help="side of the stored JPEGs")
    ap.add_argument("--input-size", type=int, default=64, help="the model's input size")
    ap.add_argument("--arch", default="mini_resnet",
                    help="mini_resnet | mini_vit | any timm architecture (random weights), e.g. vit_base_patch16_224")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the streaming run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from rib.data import cache
    from rib.data.labels import LabelProjection
    from rib.data.loading import batches, normalize, open_dataset
    from rib.data.manifest import load_prepared
    from rib.evaluate import predict
    from rib.models import network
    from rib.models.registry import MINI_ARCHS, Preprocessing
    from rib.train import autocast

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="rib-eval-bench-"))
    t0 = time.time()
    folder = make_dataset(work, args.images, args.source_size)
    prepared = load_prepared(folder)
    print(f"dataset: {len(prepared.rows)} JPEGs of {args.source_size}px in {time.time() - t0:.1f}s -> {work}")

    labels = [c.wnids[0] for c in prepared.classes]
    if args.arch in MINI_ARCHS:
        arch = MINI_ARCHS[args.arch]
        kwargs = dict(arch.kwargs)
        if arch.family == "vit":
            kwargs["img_size"] = args.input_size
        model = network.create(arch.timm_name, kwargs, len(labels))
    else:
        model = network.create(args.arch, {}, len(labels))
    model = model.eval().to(device)
    prep = Preprocessing(args.input_size)
    scoring = "restricted"

    t0 = time.time()
    cache_dir = work / "cache" / cache.prep_key(prep) / prepared.name
    cache.build(prepared, prep, cache_dir, show_progress=False)
    build_s = time.time() - t0
    n = len(prepared.rows)

    opened = cache.open_cache(cache_dir, prepared, prep)
    resident = open_dataset(prepared, None, prep, preload_images=False, cache=opened)
    images = torch.cat([x for x, _ in batches(resident, torch.arange(n), 4096)])
    if device.type == "cuda":
        images = images.pin_memory()
    ys = resident.labels.to(device)
    projection = LabelProjection(prepared.classes, labels).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def forward_only():  # the same steps as rib.evaluate.predict, minus reading the data
        out = []
        for start in range(0, n, args.batch):
            with autocast(device, args.precision):
                logits = model(normalize(images[start:start + args.batch], prep, device))
            out.append(projection.correct(logits.float(), ys[start:start + args.batch], scoring).cpu())
        sync()

    def run(**kw):
        predict(model, prepared, labels, prep, scoring=scoring, batch_size=args.batch, device=device,
                precision=args.precision, show_progress=False, **kw)
        sync()

    cases = {
        "forward-only (tensors in memory)": forward_only,
        "rib evaluate, from the cache": lambda: run(caches=[str(cache_dir)], preload=False),
        "rib evaluate, no cache, decode all first (preload)": lambda: run(preload=True),
        f"rib evaluate, no cache, streaming, {args.workers} workers": lambda: run(preload=False,
                                                                                    workers=args.workers),
    }
    forward_only()  # warm-up (CUDA kernels, allocator)
    best = {}
    for _ in range(args.repeats):  # interleaved, best of N: the same conditions for each
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    ceiling = n / best["forward-only (tensors in memory)"]
    print(f"model {args.arch} at {args.input_size}px, {args.device} {args.precision}, batch {args.batch}, "
          f"{args.threads} thread(s), "
          f"{n} images; cache built once in {build_s:.1f}s")
    report = {}
    for name, seconds in best.items():
        rate = n / seconds
        report[name] = {"images_per_s": round(rate, 1), "ratio_to_forward_only": round(rate / ceiling, 3)}
        print(f"  {name:<58} {rate:9.1f} img/s   {rate / ceiling:6.3f} x forward-only")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
