"""Every training method on the real ViT-B/16 at 224 px: seconds per step, evaluation speed, peak memory.

One cell per method of configs/imagenet-rib.yaml (the paper's and the literature's, at the settings
that file gives them), on timm's vit_base_patch16_224 with random weights and a 1000-class head,
through rib's training loop (rib.train.fit) on in-memory images: the second of two epochs is timed
(the first warms up). EWC with the Fisher and MAS also time their importance weights per image.
Evaluation: rib.evaluate.predict's images per second. Each method runs in its own process, so its
peak memory (resident set; on CUDA also the allocator's peak) is its own.

    python benchmarks/methods_vit_b16.py [--device cpu] [--batch 8] [--steps 3] [--eval-images 64]
    python benchmarks/methods_vit_b16.py --device cuda --batch 64 --steps 20 --eval-images 2048

``--record FILE`` appends the run to a throughputs file (benchmarks/throughputs.yaml), where
`rib plan` reads training and evaluation images per second of the vit_b16 family.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
METHODS = ["ft", "lp", "linear_probe", "lora", "visual_prompt", "ewc", "lwf", "ewc_fisher", "l2sp", "mas"]
CLASSES = 1000


def one(args) -> dict:
    """Time one method (in this process) and return its numbers."""
    import torch

    from rib.config import load, method_schedule
    from rib.data.labels import LabelProjection
    from rib.data.loading import InMemoryDataset
    from rib.data.suites import DatasetClass
    from rib.evaluate import predict
    from rib.methods import get_method
    from rib.models import network
    from rib.models.registry import Preprocessing
    from rib.train import Schedule, fit

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = load(REPO / "configs" / "imagenet-rib.yaml")
    cfg = {**method_schedule(params, args.one), "epochs": 2, "batch_size": args.batch, "warmup_steps": 1,
           "precision": args.precision}
    if "samples" in cfg:
        cfg["samples"] = args.importance_images
    labels = [f"c{i}" for i in range(CLASSES)]
    classes = tuple(DatasetClass(f"c{i}", (f"c{i}",)) for i in range(CLASSES))
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.steps

    def images(count):
        return InMemoryDataset(torch.randint(0, 256, (count, 3, 224, 224), dtype=torch.uint8, generator=g),
                               torch.randint(0, CLASSES, (count,), generator=g))

    data, reference = images(n), images(args.importance_images)
    prep = Preprocessing(224, "bicubic", 0.9)
    model = network.create("vit_base_patch16_224", {}, CLASSES)
    method = get_method(cfg["method"], cfg)
    work = Path(tempfile.mkdtemp(prefix="rib-methods-bench-"))
    importance, trainable = {}, {}
    listed = method.trainable_parameters

    def counted(module):  # fit asks once, right after setup (LoRA's factors exist only until finalize)
        params = listed(module)
        trainable.setdefault("n", sum(p.numel() for p in params))
        return params
    method.trainable_parameters = counted
    if hasattr(method, "estimate"):
        real = method.estimate

        def timed(*a, **k):
            t = time.perf_counter()
            out = real(*a, **k)
            importance["s_per_image"] = (time.perf_counter() - t) / args.importance_images
            return out
        method.estimate = timed
    t = time.perf_counter()
    history, final, _ = fit(model, method, data, LabelProjection(classes, labels), prep, Schedule.from_config(cfg),
                            seed=0, device=device, state_path=work / "state.pt", run_fingerprint=args.one,
                            show_progress=False, reference=lambda samples, seed: reference)
    total = time.perf_counter() - t
    steps = -(-len(data) // args.batch)
    per_step = history[1]["seconds"] / steps
    eval_data = images(args.eval_images)
    t = time.perf_counter()
    predict(final, _prepared(eval_data, classes), labels, prep, scoring="restricted", batch_size=args.batch,
            device=device, precision=args.precision, show_progress=False, loaded={("bench", None, prep): eval_data})
    eval_s = time.perf_counter() - t
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    out = {"method": args.one, "implementation": cfg["method"], "device": args.device, "device_name": name,
           "batch": args.batch, "precision": precision, "s_per_step": round(per_step, 3),
           "train_img_per_s": round(args.batch / per_step, 2), "fit_seconds": round(total, 1),
           "s_per_100_eval_images": round(100 * eval_s / args.eval_images, 2),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
           "trainable_parameters": trainable["n"]}
    if importance:
        out["importance_s_per_image"] = round(importance["s_per_image"], 3)
    if method.head_on_features:  # features once: the fit's time outside its epochs, per image
        out["feature_s_per_image"] = round((total - sum(h["seconds"] for h in history)) / len(data), 4)
    if device.type == "cuda":
        out["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out


def _prepared(data, classes):
    """A stand-in prepared dataset for predict (its rows and classes; the images are given already loaded)."""
    from rib.data.manifest import PreparedDataset, Row

    rows = tuple(Row(f"{i}.png", int(y), "", "", str(i), "heldout") for i, y in enumerate(data.labels))
    return PreparedDataset("bench", Path("."), classes, rows, {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="optimisation steps per epoch")
    ap.add_argument("--eval-images", type=int, default=64)
    ap.add_argument("--importance-images", type=int, default=4, help="images for EWC's Fisher and MAS")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--record", metavar="FILE", help="append this run to a throughputs file (rib plan reads it)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    rows = []
    for name in args.methods:
        cmd = [sys.executable, __file__, "--one", name, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nViT-B/16 at 224 px, {args.device}, batch {args.batch}, precision {args.precision}:")
    print("| method | s / step | train img/s | s / 100 eval images | peak RSS GiB | trainable parameters | "
          "importance s / image |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['s_per_step']} | {r['train_img_per_s']} | {r['s_per_100_eval_images']} | "
              f"{r['peak_rss_gib']} | {r['trainable_parameters']:,} | {r.get('importance_s_per_image', '')} |")
    if args.record:
        record(Path(args.record), args, rows)


def record(path: Path, args, rows: list[dict]) -> None:
    """Append the run to the ``measurements`` list that ends a throughputs file (comments kept)."""
    import yaml

    if not any(r["implementation"] == "ft" for r in rows):
        sys.exit(f"--record: {path} not written: rib plan needs FT's numbers (add ft to --methods)")
    keep = ("s_per_step", "train_img_per_s", "s_per_100_eval_images", "importance_s_per_image", "feature_s_per_image")
    methods: dict = {}
    for r in rows:
        methods.setdefault(r["implementation"], {k: r[k] for k in keep if k in r})
    entry = {"family": "vit_b16", "model": "vit_base_patch16_224, random weights, 1000-class head, 224 px",
             "device": rows[0]["device_name"], "gpu": rows[0]["device"].startswith("cuda"),
             "script": (f"benchmarks/methods_vit_b16.py --device {args.device} --batch {args.batch} --steps "
                        f"{args.steps} --eval-images {args.eval_images} --importance-images {args.importance_images} "
                        f"--precision {args.precision} --threads {args.threads}"),
             "date": datetime.date.today().isoformat(), "batch": args.batch, "precision": rows[0]["precision"],
             "methods": methods}
    text = path.read_text() if path.exists() else "measurements:\n"
    block = yaml.safe_dump([entry], sort_keys=False, default_flow_style=None, width=1000)
    path.write_text(text.rstrip("\n") + "\n" + "".join(f"  {line}\n" for line in block.splitlines()))
    from rib.plan import load_throughputs

    load_throughputs(path)  # readable as rib plan reads it
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
