"""The ``rib`` command: every step of the pipeline as one subcommand.

Snakemake rules and DVC stages are thin wrappers around these subcommands; each reads
``params.yaml`` (``--params``), validates it, and writes its outputs atomically. Heavy libraries
(torch, timm) are imported only by the subcommands that need them.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

from . import __version__
from .config import ConfigError, load
from .errors import RibError, TrainingStopped

log = logging.getLogger("rib")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _torch_setup(params: dict, threads: int | None):
    import torch

    torch.set_num_threads(threads or params["runtime"]["threads"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    from .train import resolve_device

    return resolve_device(params["runtime"]["device"])


def _provenance(device) -> dict:
    import torch

    return {"rib_version": __version__, "torch_version": str(torch.__version__), "device": str(device),
            "host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------
def cmd_validate(args, params) -> int:
    from . import grid
    from .models.registry import check_available, get_model

    for name in params["grid"]["models"]:  # the slower check: do timm/open_clip know the name?
        check_available(get_model(name, params))
    n_cells = sum(1 for _ in grid.cells(params))
    n_jobs = sum(1 for _ in grid.finetune_jobs(params))
    print(f"{args.params}: valid (suite {params['suite']}, {len(params['grid']['models'])} models, "
          f"{n_jobs} fine-tuning jobs, {n_cells} cells)")
    return 0


def cmd_grid(args, params) -> int:
    from . import grid

    if args.what == "cells":
        for cell in grid.cells(params):
            print(cell.path(params["suite"]))
    elif args.what == "finetune":
        for model, method, dataset in grid.finetune_jobs(params):
            print(grid.path("finetuned", suite=params["suite"], model=model, method=method, dataset=dataset))
    else:
        for name in grid.datasets_to_prepare(params):
            print(grid.data_dir(params, name))
    return 0


def cmd_generate(args, params) -> int:
    from .data.suites import get_suite

    suite = get_suite(params)
    if not suite.synthetic:
        raise RibError(f"suite {suite.name!r} is not synthetic; its datasets are downloaded, not generated")
    suite.dataset(args.dataset)
    from .data.synthetic.generate import generate

    t0 = time.time()
    n = generate(params, args.dataset, args.out, show_progress=not args.quiet)
    log.info("generated %s: %d images in %.1fs -> %s", args.dataset, n, time.time() - t0, args.out)
    return 0


def cmd_prepare(args, params) -> int:
    from .data.manifest import prepare
    from .data.suites import get_suite

    suite = get_suite(params)
    data = params["data"]
    info = prepare(suite.dataset(args.dataset), args.raw, args.out, label_space=suite.label_space,
                   fraction=params["split"]["heldout_fraction"], seed=params["split"]["seed"],
                   skip_corrupt=data["skip_corrupt_images"], corruption_per_leaf=data["corruption_subset"],
                   class_map_version=f"{suite.name}/{suite.class_map_version}", show_progress=not args.quiet)
    log.info("prepared %s: %d images, %d classes, parts %s, %d unreadable left out -> %s", args.dataset,
             info["num_images"], info["num_classes"], info["parts"], info["skipped_images"], args.out)
    return 0


def _raw_dir(args, params) -> str:
    from . import grid

    return args.out or grid.data_dir(params, args.dataset, "raw")


def cmd_fetch(args, params) -> int:
    from .data.fetch import fetch
    from .data.suites import get_suite

    suite = get_suite(params)
    out = _raw_dir(args, params)
    fetch(suite.dataset(args.dataset), out, downloads=params["data"]["downloads"], label_space=suite.label_space,
          params_file=args.params, show_progress=not args.quiet)
    return 0


def cmd_add(args, params) -> int:
    from .data.fetch import add
    from .data.suites import get_suite

    suite = get_suite(params)
    add(suite.dataset(args.dataset), args.path, _raw_dir(args, params), label_space=suite.label_space,
        show_progress=not args.quiet)
    return 0


def cmd_models_fetch(args, params) -> int:
    from . import grid
    from .data.suites import get_suite
    from .models import network
    from .models.registry import check_available, get_model
    from .train import resolve_device

    spec = get_model(args.model, params)
    check_available(spec)
    out = args.out or grid.path("pretrained", suite=params["suite"], model=spec.name)
    network.fetch(spec, out, list(get_suite(params).label_space), weights_file=args.weights,
                  device=str(resolve_device(params["runtime"]["device"])))
    log.info("saved %s", out)
    return 0


def _train_and_save(args, params, *, model, spec_name, arch, arch_kwargs, label_space, prep, method, data_dir,
                    part, schedule, meta, device):
    from .data.labels import LabelProjection
    from .data.loading import open_dataset
    from .data.manifest import load_prepared
    from .models import network
    from .train import Schedule, fingerprint, fit

    prepared = load_prepared(data_dir)
    data = open_dataset(prepared, part, prep, preload_images=params["runtime"]["preload"],
                        show_progress=not args.quiet)
    projection = LabelProjection(prepared.classes, label_space)
    sched = Schedule.from_config(schedule)
    state = args.state or str(Path(args.out).with_name("state.pt"))
    run_fp = fingerprint(meta=meta, manifest=prepared.info["manifest_sha256"], seed=params["seed"])
    t0 = time.time()
    history = fit(model, method, data, projection, prep, sched, seed=params["seed"], device=device,
                  state_path=state, run_fingerprint=run_fp, workers=params["runtime"]["loader_workers"],
                  desc=meta.get("method", "train"), show_progress=not args.quiet,
                  stop_after_epoch=args.stop_after_epoch)
    meta = {**meta, "schedule": schedule, "history": history, "train_images": len(data),
            "train_manifest_sha256": prepared.info["manifest_sha256"], "seed": params["seed"],
            "train_seconds": round(time.time() - t0, 3), **_provenance(device)}
    network.save(args.out, model, name=spec_name, arch=arch, arch_kwargs=arch_kwargs, label_space=label_space,
                 preprocessing=prep, meta=meta)
    Path(state).unlink(missing_ok=True)
    log.info("saved %s", args.out)


def cmd_pretrain(args, params) -> int:
    import torch

    from .data.suites import get_suite
    from .methods import get_method
    from .models import network
    from .models.registry import get_model

    device = _torch_setup(params, args.threads)
    spec = get_model(args.model, params)
    corpus = spec.pretrain_corpus
    if corpus is None:
        raise RibError(f"model {spec.name!r} is not pretrained by the pipeline (weights: {spec.weights})")
    suite = get_suite(params)
    pre = params["pretrain"]
    schedule = {**{k: pre[k] for k in ("optimizer", "batch_size", "lr", "momentum", "weight_decay", "warmup_steps")},
                "epochs": pre["epochs"][corpus], "precision": params["train"]["precision"]}
    torch.manual_seed(params["seed"])
    model = network.build(spec, len(suite.label_space))
    _train_and_save(args, params, model=model, spec_name=spec.name, arch=spec.arch, arch_kwargs=spec.arch_kwargs,
                    label_space=list(suite.label_space), prep=spec.preprocessing, method=get_method("ft", schedule),
                    data_dir=args.data, part=None, schedule=schedule, device=device,
                    meta={"kind": "pretrained", "method": "pretrain", "corpus": corpus, "suite": suite.name,
                          "parameters": network.count_parameters(model), "feature_dim": network.feature_dim(model)})
    return 0


def cmd_finetune(args, params) -> int:
    from .config import method_schedule
    from .io import sha256_file
    from .methods import get_method
    from .models import network

    device = _torch_setup(params, args.threads)
    if args.method not in params["methods"]:
        raise ConfigError(f"{args.params}: methods.{args.method}: no settings for method {args.method!r}")
    from .models.registry import canonical_name

    ckpt = network.load(args.pretrained)
    if ckpt.name != canonical_name(args.model):
        raise RibError(f"{args.pretrained}: holds model {ckpt.name!r}, not {args.model!r}")
    schedule = method_schedule(params, args.method)
    _train_and_save(args, params, model=ckpt.model, spec_name=ckpt.name, arch=ckpt.arch,
                    arch_kwargs=ckpt.arch_kwargs, label_space=ckpt.label_space, prep=ckpt.preprocessing,
                    method=get_method(args.method, schedule), data_dir=args.data, part="finetune",
                    schedule=schedule, device=device,
                    meta={"kind": "finetuned", "method": args.method, "finetune_dataset": args.dataset,
                          "suite": params["suite"], "pretrained": str(args.pretrained),
                          "pretrained_sha256": sha256_file(args.pretrained),
                          "parameters": network.count_parameters(ckpt.model),
                          "feature_dim": network.feature_dim(ckpt.model)})
    return 0


def cmd_evaluate(args, params) -> int:
    from .data.manifest import load_prepared
    from .evaluate import evaluate_checkpoint
    from .grid import PRETRAINED
    from .io import sha256_file, write_json
    from .models import network

    device = _torch_setup(params, args.threads)
    ckpt = network.load(args.checkpoint)
    meta = ckpt.meta
    finetuned_on = meta.get("finetune_dataset")
    from . import grid

    folders = args.datasets or [grid.data_dir(params, d) for d in grid.eval_datasets(params)]
    datasets = [load_prepared(d) for d in folders]
    ev = params["evaluate"]
    records = evaluate_checkpoint(ckpt.model, ckpt.label_space, ckpt.preprocessing, datasets,
                                  finetuned_on=finetuned_on, scoring=ev["scoring"], batch_size=ev["batch_size"],
                                  device=device, precision=params["train"]["precision"],
                                  workers=params["runtime"]["loader_workers"], preload=params["runtime"]["preload"],
                                  show_progress=not args.quiet)
    digest = sha256_file(args.checkpoint)
    common = {"suite": meta.get("suite", params["suite"]), "model": ckpt.name,
              "method": meta["method"] if meta.get("kind") == "finetuned" else PRETRAINED,
              "finetune_dataset": finetuned_on, "scoring": ev["scoring"],
              "model_info": {"parameters": meta.get("parameters"), "feature_dim": meta.get("feature_dim"),
                             "arch": ckpt.arch},
              "checkpoint": str(args.checkpoint), "checkpoint_sha256": digest, "seed": params["seed"],
              **_provenance(device)}
    out_dir = Path(args.out_dir)
    for prepared, rec in zip(datasets, records):
        write_json(out_dir / f"{prepared.name}.json",
                   {**common, **rec, "manifest_sha256": prepared.info["manifest_sha256"],
                    "skipped_images": prepared.info.get("skipped_images", 0)})
    return 0


def cmd_aggregate(args, params) -> int:
    from . import aggregate, grid

    suite = params["suite"]
    outs = {k: grid.path(k, suite=suite) for k in ("cells", "metrics", "summary", "summary_md", "methods_summary")}
    tables = aggregate.write_tables(params, outs, root=args.root)
    log.info("aggregated %d cells into %s", len(tables["cells"]), ", ".join(outs.values()))
    return 0


def cmd_figures(args, params) -> int:
    import pandas as pd

    from . import figures, grid

    suite = params["suite"]
    metrics = pd.read_csv(grid.path("metrics", suite=suite))
    summary = pd.read_csv(grid.path("summary", suite=suite))
    rep = params["report"]
    figures.radar(metrics, rep["focus_dataset"], rep["focus_method"], grid.path("radar", suite=suite))
    figures.bar(summary, rep["focus_dataset"], grid.path("bar", suite=suite))
    log.info("figures written under reports/%s/figures", suite)
    return 0


# ----------------------------------------------------------------------------------------------
# Argument parsing
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    # --params may come before or after the subcommand; SUPPRESS keeps a subcommand's absent option
    # from overwriting the top-level one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default=argparse.SUPPRESS, help="configuration file (default: params.yaml)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    torch_opts = argparse.ArgumentParser(add_help=False)
    torch_opts.add_argument("--threads", type=int, default=None, help="CPU threads (default: runtime.threads)")
    train_opts = argparse.ArgumentParser(add_help=False)
    train_opts.add_argument("--data", required=True, help="prepared dataset folder to train on")
    train_opts.add_argument("--out", required=True, help="checkpoint to write")
    train_opts.add_argument("--state", default=None, help="resume-state file (default: state.pt beside --out)")
    train_opts.add_argument("--stop-after-epoch", type=int, default=None, help=argparse.SUPPRESS)

    p = argparse.ArgumentParser(prog="rib", description="ImageNet-RIB: robustness inheritance benchmark pipeline")
    p.add_argument("--version", action="version", version=f"rib {__version__}")
    p.add_argument("--params", default=os.environ.get("RIB_PARAMS", "params.yaml"),
                   help="configuration file (default: $RIB_PARAMS, else params.yaml)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate", parents=[common], help="check params.yaml and summarise the grid")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("grid", parents=[common], help="list the grid's output files")
    s.add_argument("what", choices=["cells", "finetune", "datasets"], nargs="?", default="cells")
    s.set_defaults(func=cmd_grid)

    data = sub.add_parser("data", help="dataset steps").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("generate", parents=[common], help="generate one dataset of a synthetic suite")
    s.add_argument("dataset")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_generate)
    s = data.add_parser("fetch", parents=[common], help="download, verify and unpack a dataset of a real suite")
    s.add_argument("dataset")
    s.add_argument("--out", default=None, help="raw dataset folder (default: data/<suite>/raw/<dataset>)")
    s.set_defaults(func=cmd_fetch)
    s = data.add_parser("add", parents=[common], help="ingest a dataset you downloaded yourself (folder or archive)")
    s.add_argument("dataset")
    s.add_argument("path", help="the dataset's folder, or a .tar/.tar.gz/.zip of it")
    s.add_argument("--out", default=None, help="raw dataset folder (default: data/<suite>/raw/<dataset>)")
    s.set_defaults(func=cmd_add)
    s = data.add_parser("prepare", parents=[common], help="index, verify and split a dataset folder")
    s.add_argument("dataset")
    s.add_argument("--raw", required=True, help="the dataset folder")
    s.add_argument("--out", required=True, help="prepared folder to write")
    s.set_defaults(func=cmd_prepare)

    models = sub.add_parser("models", help="model steps").add_subparsers(dest="models_command", required=True)
    s = models.add_parser("fetch", parents=[common], help="save a timm model's pretrained weights as a checkpoint")
    s.add_argument("model")
    s.add_argument("--out", default=None, help="checkpoint (default: models/<suite>/<model>/pretrained.pt)")
    s.add_argument("--weights", default=None, help="a local file of the weights instead of the download")
    s.set_defaults(func=cmd_models_fetch)

    s = sub.add_parser("pretrain", parents=[common, torch_opts, train_opts], help="pretrain a rib-mini model")
    s.add_argument("model")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("finetune", parents=[common, torch_opts, train_opts],
                       help="fine-tune a pretrained model on one dataset with one method")
    s.add_argument("model")
    s.add_argument("method")
    s.add_argument("dataset")
    s.add_argument("--pretrained", required=True, help="pretrained checkpoint")
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("evaluate", parents=[common, torch_opts], help="evaluate a checkpoint: one JSON per dataset")
    s.add_argument("checkpoint")
    s.add_argument("datasets", nargs="*",
                   help="prepared dataset folders (default: the source set and every dataset of grid.datasets)")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("aggregate", parents=[common], help="cells -> long table, metrics and summary tables")
    s.add_argument("--root", default=".", help="folder holding results/ (default: .)")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("figures", parents=[common], help="the radar and bar charts from the tables")
    s.set_defaults(func=cmd_figures)
    return p


def main(argv: list[str] | None = None) -> int:
    from .progress import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        params = load(args.params)
        return args.func(args, params)
    except TrainingStopped as stop:
        log.warning("%s", stop)
        return 3
    except RibError as err:
        print(f"rib: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
