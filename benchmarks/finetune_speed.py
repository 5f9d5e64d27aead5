"""Fine-tuning steps per second of rib's training loop (rib.train.fit) on in-memory images.

Full fine-tuning (FT) of a timm architecture with random weights at its input size, the paper's
SGD recipe, bf16 autocast on a GPU; the first epoch is warm-up and not counted.

    python benchmarks/finetune_speed.py [--arch vit_base_patch16_224] [--size 224] [--batch 64]
                                        [--steps 30] [--device cuda] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit_base_patch16_224")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="timed optimisation steps (one epoch)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "auto"])
    args = ap.parse_args()

    import torch

    from rib.data.labels import LabelProjection
    from rib.data.loading import InMemoryDataset
    from rib.data.suites import DatasetClass
    from rib.methods import get_method
    from rib.models import network
    from rib.models.registry import Preprocessing
    from rib.train import Schedule, fit

    device = torch.device(args.device)
    classes = 100
    labels = [f"c{i}" for i in range(classes)]
    n = args.batch * args.steps
    g = torch.Generator().manual_seed(0)
    data = InMemoryDataset(torch.randint(0, 256, (n, 3, args.size, args.size), dtype=torch.uint8, generator=g),
                           torch.randint(0, classes, (n,), generator=g))
    projection = LabelProjection(tuple(DatasetClass(f"c{i}", (f"c{i}",)) for i in range(classes)), labels)
    prep = Preprocessing(args.size)
    rates = []
    work = Path(tempfile.mkdtemp(prefix="rib-ft-bench-"))
    for epochs in (1, 2):  # the difference between a 2-epoch and a 1-epoch run is one epoch, warm
        model = network.create(args.arch, {}, classes)
        sched = Schedule(epochs=epochs, batch_size=args.batch, lr=1e-3, momentum=0.9, weight_decay=0.0,
                         warmup_steps=10, precision=args.precision)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fit(model, get_method("ft", {}), data, projection, prep, sched, seed=0, device=device,
            state_path=work / f"state{epochs}.pt", run_fingerprint=str(epochs), show_progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(time.perf_counter() - t)
    per_epoch = rates[1] - rates[0]
    steps_per_s = args.steps / per_epoch
    result = {"arch": args.arch, "size": args.size, "batch": args.batch, "device": args.device,
              "precision": args.precision, "steps_per_s": round(steps_per_s, 2),
              "images_per_s": round(steps_per_s * args.batch, 1)}
    print(f"fine-tuning {args.arch} at {args.size}px, batch {args.batch}, {args.device} {args.precision}: "
          f"{steps_per_s:.2f} steps/s ({steps_per_s * args.batch:.0f} img/s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
