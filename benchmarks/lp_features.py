"""Linear probing (`linear_probe`) on features computed once against a frozen-backbone forward every epoch.

The same pretrained model, data, schedule (10 epochs by default), seed and thread count; side by
side in one process. Prints the time of each, the speed-up, and both heads' held-out accuracy.

    python benchmarks/lp_features.py [--images-per-class 300] [--epochs 10] [--arch mini_vit] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images-per-class", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--arch", default="mini_vit", choices=["mini_vit", "mini_resnet"])
    ap.add_argument("--pretrain-epochs", type=int, default=3, help="epochs of pretraining the backbone first")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    import yaml

    from rib import grid
    from rib.data.labels import LabelProjection
    from rib.data.loading import open_dataset
    from rib.data.manifest import load_prepared, prepare
    from rib.data.suites import get_suite
    from rib.data.synthetic.generate import generate
    from rib.evaluate import predict
    from rib.methods import get_method
    from rib.methods.lp import LinearProbing
    from rib.models import network
    from rib.models.registry import get_model
    from rib.train import Schedule, fit

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synthetic"]["images_per_class"]["shift"] = args.images_per_class
    work = Path(tempfile.mkdtemp(prefix="rib-lp-bench-"))
    os.chdir(work)
    suite = get_suite(params)
    for name in ("sketch", "narrow"):
        raw = grid.data_dir(params, name, "raw")
        generate(params, name, raw, show_progress=False)
        prepare(suite.dataset(name), raw, grid.data_dir(params, name), label_space=suite.label_space,
                fraction=0.5, seed=0, show_progress=False)

    spec = get_model(f"{args.arch}.narrow", params)
    prep = spec.preprocessing
    labels = list(suite.label_space)

    def model_from(state=None):
        model = network.create(spec.arch, spec.arch_kwargs, len(labels))
        if state is not None:
            model.load_state_dict(state)
        return model

    # A backbone worth probing: a short pretraining on the narrow corpus.
    corpus = load_prepared(grid.data_dir(params, "narrow"))
    torch.manual_seed(0)
    base = model_from()
    pre = params["pretrain"]
    sched = Schedule.from_config({**pre, "epochs": args.pretrain_epochs})
    fit(base, get_method("ft", {}), open_dataset(corpus, None, prep, preload_images=True, show_progress=False),
        LabelProjection(corpus.classes, labels), prep, sched, seed=0, device=device,
        state_path=work / "pre.pt", run_fingerprint="pre", show_progress=False)
    theta = {k: v.clone() for k, v in base.state_dict().items()}

    data_ft = load_prepared(grid.data_dir(params, "sketch"))
    train = open_dataset(data_ft, "finetune", prep, preload_images=True, show_progress=False)
    projection = LabelProjection(data_ft.classes, labels)
    cfg = {**params["train"], **params["methods"]["linear_probe"], "epochs": args.epochs}
    results = {}
    for name, on_features in (("features once", True), ("backbone forward every epoch", False)):
        LinearProbing.head_on_features = on_features
        model = model_from(theta)
        t = time.perf_counter()
        fit(model, get_method("linear_probe", cfg), train, projection, prep, Schedule.from_config(cfg), seed=0,
            device=device,
            state_path=work / f"{on_features}.pt", run_fingerprint="lp", show_progress=False)
        seconds = time.perf_counter() - t
        correct = predict(model, data_ft, labels, prep, scoring="restricted", batch_size=64, device=device,
                          part="heldout", show_progress=False)
        results[name] = {"seconds": round(seconds, 3), "heldout_top1": round(100 * float(correct.float().mean()), 2)}
    LinearProbing.head_on_features = True
    fast, slow = results["features once"], results["backbone forward every epoch"]
    print(f"LP, {args.arch} at {prep.input_size}px, {len(train)} training images, {args.epochs} epochs, "
          f"{args.threads} thread(s)")
    for name, r in results.items():
        print(f"  {name:<30} {r['seconds']:8.2f} s   held-out top-1 {r['heldout_top1']:.2f} %")
    print(f"  speed-up {slow['seconds'] / fast['seconds']:.1f}x, accuracy difference "
          f"{abs(fast['heldout_top1'] - slow['heldout_top1']):.2f} points")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
