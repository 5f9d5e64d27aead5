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
from .errors import DamagedFileError, RibError, TrainingInterrupted, TrainingStopped, memory_error, out_of_memory

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


def _code_version() -> dict:
    """rib's version, a digest of its source files, and the git commit when run from a checkout."""
    import hashlib
    import subprocess

    root = Path(__file__).parent
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.py")) + sorted(root.rglob("*.yaml")):
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    commit = None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"rib_version": __version__, "code_sha256": digest.hexdigest(), "git_commit": commit}


def _provenance(device) -> dict:
    import torch

    slurm = {"slurm_job_id": os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}
    return {**_code_version(), "torch_version": str(torch.__version__), "device": str(device),
            "host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **slurm}


def _log_slurm_job() -> None:
    """Inside a SLURM job, say which one first: the job's log then names its SLURM job id."""
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        extra = f", restart {os.environ['SLURM_RESTART_COUNT']}" if os.environ.get("SLURM_RESTART_COUNT") else ""
        log.info("SLURM job %s on %s (partition %s%s)", job, platform.node(),
                 os.environ.get("SLURM_JOB_PARTITION", "?"), extra)


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
                   class_map_version=f"{suite.name}/{suite.class_map_version}",
                   by_photo=params["split"]["leak_free"], show_progress=not args.quiet)
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


def _reference_loader(data_dir, prep, show_progress: bool):
    """Pretraining-domain images for importance weights: ``samples`` rows drawn with ``seed`` (from
    the photos no leak-free evaluation uses, where the dataset was split by photo)."""
    def load(samples: int, seed: int):
        from .data.loading import ImageDataset, preload, sample_rows
        from .data.manifest import load_prepared

        prepared = load_prepared(data_dir)
        part = "finetune" if prepared.info.get("split", {}).get("by_photo") else None
        ds = ImageDataset(prepared.root, sample_rows(prepared, part, samples, seed), prep, prepared.border)
        return preload(ds, f"{prepared.name} (reference)", show_progress)
    return load


def _train_and_save(args, params, *, model, spec_name, arch, arch_kwargs, label_space, prep, method, data_dir,
                    part, schedule, meta, device, seed, reference_dir=None):
    from .data.cache import find as find_cache
    from .data.labels import LabelProjection
    from .data.loading import open_dataset
    from .data.manifest import load_prepared
    from .models import network
    from .train import Schedule, fingerprint, fit

    prepared = load_prepared(data_dir)
    data = open_dataset(prepared, part, prep, preload_images=params["runtime"]["preload"],
                        show_progress=not args.quiet, cache=find_cache(getattr(args, "cache", None), prepared, prep))
    projection = LabelProjection(prepared.classes, label_space)
    sched = Schedule.from_config(schedule)
    state = args.state or str(Path(args.out).with_name("state.pt"))
    run_fp = fingerprint(meta=meta, manifest=prepared.info["manifest_sha256"], seed=seed)
    reference = _reference_loader(reference_dir, prep, not args.quiet) if reference_dir else None
    t0 = time.time()
    interruptions: list[dict] = []
    history, final, wrapper = fit(model, method, data, projection, prep, sched, seed=seed, device=device,
                                  state_path=state, run_fingerprint=run_fp,
                                  workers=params["runtime"]["loader_workers"], desc=meta.get("method", "train"),
                                  show_progress=not args.quiet, stop_after_epoch=args.stop_after_epoch,
                                  reference=reference, interruptions=interruptions)
    meta = {**meta, "schedule": schedule, "history": history, "interruptions": interruptions,
            "train_images": len(data),
            "train_manifest_sha256": prepared.info["manifest_sha256"], "seed": seed,
            "train_seconds": round(time.time() - t0, 3), **_provenance(device)}
    network.save(args.out, final, name=spec_name, arch=arch, arch_kwargs=arch_kwargs, label_space=label_space,
                 preprocessing=prep, meta=meta, wrapper=wrapper)
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
                    label_space=list(suite.label_space), prep=spec.preprocessing, method=get_method("ft", {**schedule, "entry": "pretrain"}),
                    data_dir=args.data, part=None, schedule=schedule, device=device, seed=params["seed"],
                    meta={"kind": "pretrained", "method": "pretrain", "corpus": corpus, "suite": suite.name,
                          "parameters": network.count_parameters(model), "feature_dim": network.feature_dim(model)})
    return 0


def _check_init(path, *, entry: str, init_entry: str, dataset: str, pretrained_sha: str):
    """LP-FT's starting point: the linear probe of the same pretrained model on the same dataset."""
    from .models import network

    ckpt = network.load(path)
    meta = ckpt.meta
    if meta.get("kind") != "finetuned" or meta.get("method") != init_entry:
        raise RibError(f"{path}: methods.{entry} starts from a checkpoint of {init_entry!r}; this one is "
                       f"{meta.get('method', meta.get('kind'))!r}")
    if meta.get("finetune_dataset") != dataset:
        raise RibError(f"{path}: fine-tuned on {meta.get('finetune_dataset')!r}, not {dataset!r}")
    if meta.get("pretrained_sha256") != pretrained_sha:
        raise RibError(f"{path}: made from other pretrained weights than the ones given with --pretrained")
    return ckpt


def cmd_finetune(args, params) -> int:
    from .config import method_schedule
    from .io import sha256_file
    from .methods import entry_info, get_method, init_entry
    from .models import network
    from .models.registry import canonical_name

    entry = args.method
    if entry not in params["methods"]:
        raise ConfigError(f"{args.params}: methods.{entry}: no settings for method {entry!r}")
    info = entry_info(params, entry)
    if info.kind != "train":
        raise RibError(f"method {entry!r} combines finished models without training; run `rib combine`")
    schedule = method_schedule(params, entry)
    seed = int(schedule.get("seed", params["seed"]))
    device = _torch_setup(params, args.threads)
    ckpt = network.load(args.pretrained)
    pretrained_sha = sha256_file(args.pretrained)
    if ckpt.name != canonical_name(args.model):
        raise RibError(f"{args.pretrained}: holds model {ckpt.name!r}, not {args.model!r}")
    start = init_entry(params, entry)
    meta = {"kind": "finetuned", "method": entry, "implementation": schedule["method"],
            "finetune_dataset": args.dataset, "suite": params["suite"], "pretrained": str(args.pretrained),
            "pretrained_sha256": pretrained_sha, "parameters": network.count_parameters(ckpt.model),
            "feature_dim": network.feature_dim(ckpt.model)}
    model = ckpt.model
    if start is not None:
        if not args.init:
            raise RibError(f"methods.{entry} starts from the finished {start!r} checkpoint of this model and dataset; "
                           f"pass it with --init (the pipeline does: it is the {start!r} job's output)")
        model = _check_init(args.init, entry=entry, init_entry=start, dataset=args.dataset,
                            pretrained_sha=pretrained_sha).model
        meta.update(init=str(args.init), init_sha256=sha256_file(args.init))
    elif args.init:
        raise RibError(f"--init: methods.{entry} ({schedule['method']}) starts from the pretrained model")
    if info.needs_reference and not args.reference:
        raise RibError(f"methods.{entry} needs pretraining-domain images for its importance weights; pass the "
                       "prepared folder with --reference (the pipeline passes the model's pretraining corpus, "
                       "else grid.source)")
    if args.reference:
        meta["reference"] = str(args.reference)
    _train_and_save(args, params, model=model, spec_name=ckpt.name, arch=ckpt.arch, arch_kwargs=ckpt.arch_kwargs,
                    label_space=ckpt.label_space, prep=ckpt.preprocessing, method=get_method(schedule["method"], schedule),
                    data_dir=args.data, part="finetune", schedule=schedule, device=device, seed=seed, meta=meta,
                    reference_dir=args.reference if info.needs_reference else None)
    return 0


def _eval_settings(params, args, device) -> dict:
    ev = params["evaluate"]
    return dict(scoring=ev["scoring"], batch_size=ev["batch_size"], device=device,
                precision=params["train"]["precision"], workers=params["runtime"]["loader_workers"],
                preload=params["runtime"]["preload"], show_progress=not args.quiet, caches=args.cache,
                engine={k: params["runtime"][k] for k in ("channels_last", "compile", "gpu_decode")
                        if k in params["runtime"]})


def _eval_datasets(params, folders):
    from . import grid
    from .data.manifest import load_prepared

    folders = folders or [grid.data_dir(params, d) for d in grid.eval_datasets(params)]
    return [load_prepared(d) for d in folders]


def _write_cells(out_dir, datasets, records, common: dict) -> None:
    from .io import write_record

    out_dir = Path(out_dir)
    for prepared, rec in zip(datasets, records):
        write_record(out_dir / f"{prepared.name}.json",
                   {**common, **rec, "manifest_sha256": prepared.info["manifest_sha256"],
                    "skipped_images": prepared.info.get("skipped_images", 0)})


def cmd_evaluate(args, params) -> int:
    from .evaluate import evaluate_checkpoint
    from .grid import PRETRAINED
    from .io import sha256_file
    from .models import network

    device = _torch_setup(params, args.threads)
    ckpt = network.load(args.checkpoint)
    meta = ckpt.meta
    finetuned_on = meta.get("finetune_dataset")
    datasets = _eval_datasets(params, args.datasets)
    records = evaluate_checkpoint(ckpt.model, ckpt.label_space, ckpt.preprocessing, datasets,
                                  finetuned_on=finetuned_on, **_eval_settings(params, args, device))
    common = {"suite": meta.get("suite", params["suite"]), "model": ckpt.name,
              "method": meta["method"] if meta.get("kind") == "finetuned" else PRETRAINED,
              "finetune_dataset": finetuned_on, "scoring": params["evaluate"]["scoring"],
              "model_info": {"parameters": meta.get("parameters"), "feature_dim": meta.get("feature_dim"),
                             "arch": ckpt.arch},
              "checkpoint": str(args.checkpoint), "checkpoint_sha256": sha256_file(args.checkpoint),
              "pretrained_sha256": meta.get("pretrained_sha256") or sha256_file(args.checkpoint),
              "method_settings": meta.get("schedule"), "train_seconds": meta.get("train_seconds"),
              "seed": meta.get("seed", params["seed"]), **_provenance(device)}
    _write_cells(args.out_dir, datasets, records, common)
    return 0


def cmd_combine(args, params) -> int:
    """A weight-space method: build its model(s) from finished checkpoints and evaluate them."""
    from .config import method_schedule
    from .data.manifest import load_prepared
    from .evaluate import evaluate_checkpoint, predict
    from .io import sha256_file
    from .methods import PRETRAINED_INGREDIENT, entry_info, get_method, ingredients, trained_ingredients
    from .methods.weights import check_compatible
    from .models import network

    entry = args.method
    if entry not in params["methods"]:
        raise ConfigError(f"{args.params}: methods.{entry}: no settings for method {entry!r}")
    if entry_info(params, entry).kind != "weights":
        raise RibError(f"method {entry!r} trains a model; run `rib finetune` and `rib evaluate`")
    config = method_schedule(params, entry)
    names = trained_ingredients(params, entry)
    if len(args.ingredients) != len(names):
        raise RibError(f"methods.{entry} combines {len(names)} checkpoints ({', '.join(names)}); "
                       f"{len(args.ingredients)} given")
    device = _torch_setup(params, args.threads)
    base = network.load(args.pretrained)
    pretrained_sha = sha256_file(args.pretrained)
    theta0 = {k: v.detach().clone() for k, v in base.model.state_dict().items()}
    states, sources = {}, {}
    for name, path in zip(names, args.ingredients):
        ckpt = network.load(path)
        meta = ckpt.meta
        if meta.get("method") != name or meta.get("finetune_dataset") != args.dataset:
            raise RibError(f"{path}: expected the {name!r} checkpoint fine-tuned on {args.dataset!r}, found "
                           f"{meta.get('method')!r} on {meta.get('finetune_dataset')!r}")
        if meta.get("pretrained_sha256") != pretrained_sha:
            raise RibError(f"{path}: made from other pretrained weights than {args.pretrained}")
        if ckpt.wrapper:
            raise RibError(f"{path}: holds a {ckpt.wrapper['kind']} around the model; weight-space methods need "
                           "plain fine-tuned models")
        states[name] = ckpt.model.state_dict()
        sources[name] = {"checkpoint": str(path), "checkpoint_sha256": sha256_file(path)}
    try:
        check_compatible(theta0, states)
    except ValueError as err:
        raise RibError(f"methods.{entry}: {err}") from None
    every = ingredients(params, entry)
    if PRETRAINED_INGREDIENT in every:  # the reference's PRE: the pretrained weights
        states = {n: theta0 if n == PRETRAINED_INGREDIENT else states[n] for n in every}
        sources[PRETRAINED_INGREDIENT] = {"checkpoint": str(args.pretrained), "checkpoint_sha256": pretrained_sha}

    settings = _eval_settings(params, args, device)
    loaded: dict = {}
    own = load_prepared(args.data) if args.data else next(
        (d for d in _eval_datasets(params, None) if d.name == args.dataset), None)
    model = base.model

    def heldout_score(state) -> float:
        if own is None:
            raise RibError(f"methods.{entry}: needs the held-out part of {args.dataset!r} (--data)")
        model.load_state_dict(state)
        correct = predict(model, own, base.label_space, base.preprocessing, part="heldout", loaded=loaded,
                          **settings)
        return float(correct.float().mean())

    variants, record = get_method(config["method"], config).variants(theta0, states, heldout_score)
    datasets = _eval_datasets(params, args.datasets)
    per_variant = []
    for variant, state in variants:
        model.load_state_dict(state)
        log.info("%s %s", entry, {k: v for k, v in variant.items() if k != "headline"})
        per_variant.append((variant, evaluate_checkpoint(model, base.label_space, base.preprocessing, datasets,
                                                         finetuned_on=args.dataset, loaded=loaded, **settings)))
    headline = next((i for i, (v, _) in enumerate(per_variant) if v.get("headline")), 0)
    variant, records = per_variant[headline]
    if len(per_variant) > 1:
        for i, rec in enumerate(records):
            rec["sweep"] = [{**{k: val for k, val in v.items() if k != "headline"}, "top1": recs[i]["top1"],
                             "n": recs[i]["n"], "subsets": recs[i]["subsets"]} for v, recs in per_variant]
    common = {"suite": params["suite"], "model": base.name, "method": entry, "finetune_dataset": args.dataset,
              "scoring": params["evaluate"]["scoring"],
              "model_info": {"parameters": base.meta.get("parameters"), "feature_dim": base.meta.get("feature_dim"),
                             "arch": base.arch},
              "checkpoint": None, "pretrained": str(args.pretrained), "pretrained_sha256": pretrained_sha,
              "method_settings": config,
              "combination": {"implementation": config["method"], "settings": {k: v for k, v in variant.items()
                                                                             if k != "headline"},
                              "ingredients": sources, **record},
              "seed": params["seed"], **_provenance(device)}
    _write_cells(args.out_dir, datasets, records, common)
    return 0


def cmd_cache(args, params) -> int:
    """Build or check the preprocessed-image cache of one dataset in one preprocessing."""
    from .data import cache
    from .data.manifest import load_prepared

    prepared = load_prepared(args.data)
    prep = cache.prep_from_key(args.prep)
    if args.cache_command == "build":
        if prepared.name != args.dataset:
            raise RibError(f"{args.data}: holds dataset {prepared.name!r}, not {args.dataset!r}")
        cache.build(prepared, prep, args.out, workers=params["runtime"]["loader_workers"],
                    show_progress=not args.quiet)
        cache.open_cache(args.out, prepared, prep)  # readable as written (build hashed each shard)
        log.info("saved %s", args.out)
    else:
        opened = cache.open_cache(args.out, prepared, prep, verify=True)
        print(f"{args.out}: valid ({opened.n} images, {len(opened.shards)} shard(s), digests match)")
    return 0


def cmd_distance(args, params) -> int:
    """OTDD between the pretraining-domain data and one fine-tuning dataset, on the pretrained
    model's pre-logit features."""
    import numpy as np
    import torch

    from .data.cache import find as find_cache
    from .data.loading import batches, normalize, open_dataset, sample_rows
    from .data.manifest import load_prepared
    from .distance import otdd
    from .evaluate import AUTO_BATCH
    from .io import sha256_file, write_record
    from .models import network

    device = _torch_setup(params, args.threads)
    ckpt = network.load(args.pretrained)
    settings = params["distance"]
    model = ckpt.model.eval().to(device)
    t0 = time.time()

    def features(folder, part):
        prepared = load_prepared(folder)
        rows = sample_rows(prepared, part, settings["samples"], params["seed"])
        data = open_dataset(prepared, part, ckpt.preprocessing, preload_images=params["runtime"]["preload"],
                            show_progress=not args.quiet, rows=rows,
                            cache=find_cache(args.cache, prepared, ckpt.preprocessing))
        out = []
        with torch.inference_mode():
            size = params["evaluate"]["batch_size"]
            size = AUTO_BATCH.get(device.type, 64) if size == "auto" else size
            for images, _ in batches(data, torch.arange(len(data)), size):
                out.append(network.pre_logits(model, normalize(images, ckpt.preprocessing, device)).float().cpu())
        return prepared, torch.cat(out).numpy(), np.array([r.label for r in rows])

    ref, x1, y1 = features(args.reference_data, None)
    own, x2, y2 = features(args.data, "finetune")
    result = otdd(x1, y1, x2, y2, reg=settings["reg"], debias=settings["debias"], seed=params["seed"])
    record = {"suite": params["suite"], "model": ckpt.name, "reference": ref.name, "finetune_dataset": own.name,
              "features": "pre-logits", "feature_dim": int(x1.shape[1]), **result, "settings": settings,
              "checkpoint": str(args.pretrained), "checkpoint_sha256": sha256_file(args.pretrained),
              "manifest_sha256": {ref.name: ref.info["manifest_sha256"], own.name: own.info["manifest_sha256"]},
              "seed": params["seed"], "seconds": round(time.time() - t0, 3), **_provenance(device)}
    write_record(args.out, record)
    log.info("OTDD(%s, %s) = %.4f on %d + %d images", ref.name, own.name, result["otdd"], *result["n"])
    return 0


def cmd_aggregate(args, params) -> int:
    from . import aggregate, grid

    suite = params["suite"]
    outs = {k: grid.path(k, suite=suite) for k in grid.TABLES}
    tables = aggregate.write_tables(params, outs, root=args.root)
    log.info("aggregated %d cells into %s", len(tables["cells"]), ", ".join(outs.values()))
    return 0


def cmd_figures(args, params) -> int:
    from . import figures, grid

    suite = params["suite"]
    tables = {k: grid.path(k, suite=suite) for k in ("metrics", "summary", "sweeps", "distances", "ri_matrix")}
    written = figures.draw_all(tables, params["report"], lambda name, ext: grid.path("figure", suite=suite,
                                                                                     figure=name, ext=ext))
    log.info("%d figures written under reports/%s/figures", len(written), suite)
    return 0


def cmd_data_list(args, params) -> int:
    from . import status

    rows = status.datasets(params, sizes=not args.no_size)
    print(status.as_json(rows) if args.json else status.render_datasets(rows), end="" if not args.json else "\n")
    return 0


def cmd_models_list(args, params) -> int:
    from . import status

    rows = status.models(params)
    print(status.as_json(rows) if args.json else status.render_models(rows), end="" if not args.json else "\n")
    return 0


def cmd_compare(args, params) -> int:
    from . import published

    print(published.render(published.compare(params)), end="")
    return 0


def cmd_usage(args, params) -> int:
    from . import usage

    suite = params["suite"]
    summary, rates = usage.write(f"logs/{suite}", f"reports/{suite}", params)
    print(usage.markdown(summary, rates), end="")
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
    cache_opts = argparse.ArgumentParser(add_help=False)
    cache_opts.add_argument("--cache", nargs="*", default=None, metavar="FOLDER",
                            help="preprocessed-image caches (cache/<suite>/<preprocessing>/<dataset>) to read "
                                 "instead of decoding; a dataset without one here is decoded")
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
    s = data.add_parser("list", parents=[common],
                        help="each dataset of the suite: missing / present / prepared, images, size on disk, how to get it")
    s.add_argument("--json", action="store_true", help="JSON instead of a table")
    s.add_argument("--no-size", action="store_true", help="skip measuring disk use (walks every file)")
    s.set_defaults(func=cmd_data_list)
    s = data.add_parser("prepare", parents=[common], help="index, verify and split a dataset folder")
    s.add_argument("dataset")
    s.add_argument("--raw", required=True, help="the dataset folder")
    s.add_argument("--out", required=True, help="prepared folder to write")
    s.set_defaults(func=cmd_prepare)

    models = sub.add_parser("models", help="model steps").add_subparsers(dest="models_command", required=True)
    s = models.add_parser("list", parents=[common],
                          help="each model: where its weights come from, fetched or not, its preprocessing")
    s.add_argument("--json", action="store_true", help="JSON instead of a table")
    s.set_defaults(func=cmd_models_list)
    s = models.add_parser("fetch", parents=[common], help="save a timm model's pretrained weights as a checkpoint")
    s.add_argument("model")
    s.add_argument("--out", default=None, help="checkpoint (default: models/<suite>/<model>/pretrained.pt)")
    s.add_argument("--weights", default=None, help="a local file of the weights instead of the download")
    s.set_defaults(func=cmd_models_fetch)

    s = sub.add_parser("pretrain", parents=[common, torch_opts, train_opts], help="pretrain a rib-mini model")
    s.add_argument("model")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("finetune", parents=[common, torch_opts, train_opts, cache_opts],
                       help="fine-tune a pretrained model on one dataset with one method")
    s.add_argument("model")
    s.add_argument("method")
    s.add_argument("dataset")
    s.add_argument("--pretrained", required=True, help="pretrained checkpoint")
    s.add_argument("--init", default=None, help="checkpoint training starts from (LP-FT: its linear probe)")
    s.add_argument("--reference", default=None,
                   help="prepared pretraining-domain dataset (importance weights of EWC and MAS)")
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("evaluate", parents=[common, torch_opts, cache_opts],
                       help="evaluate a checkpoint: one JSON per dataset")
    s.add_argument("checkpoint")
    s.add_argument("datasets", nargs="*",
                   help="prepared dataset folders (default: the source set and every dataset of grid.datasets)")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("combine", parents=[common, torch_opts, cache_opts],
                       help="a weight-space method (WiSE-FT, soups, Model Stock): combine checkpoints and evaluate")
    s.add_argument("model")
    s.add_argument("method")
    s.add_argument("dataset", help="the fine-tuning dataset of the checkpoints")
    s.add_argument("--pretrained", required=True, help="pretrained checkpoint")
    s.add_argument("--ingredients", nargs="+", required=True, metavar="CHECKPOINT",
                   help="the fine-tuned checkpoints, in the order of the method's settings")
    s.add_argument("--data", default=None, help="prepared folder of the fine-tuning dataset (held-out choices)")
    s.add_argument("--datasets", nargs="*", default=None, help="prepared dataset folders to evaluate on")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_combine)

    cache = sub.add_parser("cache", help="preprocessed-image caches").add_subparsers(dest="cache_command",
                                                                                   required=True)
    for name, text in (("build", "decode, resize and crop a dataset once into uint8 shards"),
                       ("verify", "check a cache's structure and every shard's digest")):
        s = cache.add_parser(name, parents=[common], help=text)
        s.add_argument("dataset")
        s.add_argument("--data", required=True, help="prepared dataset folder")
        s.add_argument("--prep", required=True, help="preprocessing key, e.g. v2-224px-bicubic-crop0.875-center")
        s.add_argument("--out", required=True, help="cache folder (cache/<suite>/<prep>/<dataset>)")
        s.set_defaults(func=cmd_cache)

    s = sub.add_parser("distance", parents=[common, torch_opts, cache_opts],
                       help="OTDD between the pretraining-domain data and a fine-tuning dataset")
    s.add_argument("model")
    s.add_argument("dataset", help="the fine-tuning dataset")
    s.add_argument("--pretrained", required=True, help="pretrained checkpoint (its pre-logit features are used)")
    s.add_argument("--reference-data", required=True, help="prepared pretraining-domain dataset")
    s.add_argument("--data", required=True, help="prepared fine-tuning dataset (its fine-tuning part is used)")
    s.add_argument("--out", required=True, help="JSON file to write")
    s.set_defaults(func=cmd_distance)

    s = sub.add_parser("aggregate", parents=[common], help="cells -> long table, metrics and summary tables")
    s.add_argument("--root", default=".", help="folder holding results/ (default: .)")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("figures", parents=[common], help="the radar and bar charts from the tables")
    s.set_defaults(func=cmd_figures)
    s = sub.add_parser("compare", parents=[common],
                       help="the paper's published numbers beside this run's (imagenet-rib: FT on ImageNet-R)")
    s.set_defaults(func=cmd_compare)
    s = sub.add_parser("usage", parents=[common],
                       help="time and memory of each job (Snakemake's benchmark files), per rule, into reports/")
    s.set_defaults(func=cmd_usage)
    s = sub.add_parser("cell", parents=[common], help="where one table cell lives, what it depends on, how to remake it")
    s.add_argument("model")
    s.add_argument("method", help="a method of the grid, or 'pretrained'")
    s.add_argument("dataset", help="the fine-tuning dataset ('-' for the pretrained model)")
    s.add_argument("eval", help="the evaluation dataset")
    s.set_defaults(func=cmd_cell)

    s = sub.add_parser("verify", parents=[common],
                       help="check the outputs of the working folder (digests, structure); move damaged ones aside")
    s.add_argument("--root", default=".", help="working folder (default: .)")
    s.add_argument("--all-suites", action="store_true", help="check every suite's outputs, not only params' suite")
    s.add_argument("--full", action="store_true", help="also check checkpoint and cache-shard digests (reads all)")
    s.add_argument("--repair", action="store_true", help="move damaged outputs aside (NAME.damaged) to be rebuilt")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("methods", parents=[common], help="list the methods, their settings and defaults")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("plan", parents=[common],
                       help="what a run of the params file costs: jobs per rule, images, disk, hours")
    s.add_argument("--throughput", action="append", default=[], metavar="FAMILY=TRAIN,EVAL",
                   help="training and evaluation images/s of a model family (e.g. vit_b16=400,2500), over the "
                        "measured ones; repeatable")
    s.add_argument("--throughputs", default=None, metavar="FILE",
                   help="measured throughputs (default: benchmarks/throughputs.yaml of this checkout)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("dvc", parents=[common], help="write the DVC pipeline (dvc.yaml) of the params file")
    s.add_argument("--out", default=None, help="file to write (default: dvc.yaml, for params.yaml)")
    s.add_argument("--check", action="store_true", help="only check that the file is up to date")
    s.set_defaults(func=cmd_dvc)

    s = sub.add_parser("serve", parents=[common],
                       help="keep torch and timm imported and run rib commands in forks (RIB_SERVER=SOCKET); "
                            "`rib serve -- CMD ...` runs CMD (e.g. dvc repro) with a server for its rib commands")
    s.add_argument("--socket", default=None, help="Unix socket to listen on (required without a command)")
    s.add_argument("--idle-timeout", type=float, default=300.0, help="exit after this many idle seconds")
    s.add_argument("--parent", type=int, default=None, help="exit once this process is gone")
    s.add_argument("command", nargs=argparse.REMAINDER,
                   help="after --: a command to run with RIB_SERVER set; the server stops when it ends")
    s.set_defaults(func=cmd_serve)
    return p


def cmd_verify(args, params) -> int:
    """Check every output rib wrote; exit 1 when one is damaged (and, without --repair, left in place)."""
    from .verify import outputs, sweep

    suite = None if args.all_suites else params["suite"]
    total = len(outputs(Path(args.root), suite))
    findings = sweep(args.root, suite, full=args.full, repair=args.repair)
    for finding in findings:
        print(f"damaged: {finding.line()}")
    what = "digests and structure" if args.full else "structure and record digests"
    print(f"{total} outputs checked ({what}): {len(findings)} damaged"
          + (", moved aside" if findings and args.repair else ""))
    return 1 if findings and not args.repair else 0


def cmd_cell(args, params) -> int:
    """Where one cell of the tables lives, what it is made from, and how to regenerate it."""
    from . import grid
    from .io import read_record
    from .methods import entry_info, init_entry, trained_ingredients
    from .models.registry import get_model, model_slug

    suite = params["suite"]
    if args.model not in params["grid"]["models"] and model_slug(args.model) not in map(model_slug, params["grid"]["models"]):
        raise RibError(f"model {args.model!r} is not in grid.models ({', '.join(params['grid']['models'])})")
    evals = grid.eval_datasets(params)
    if args.eval not in evals:
        raise RibError(f"evaluation dataset {args.eval!r} is not one of {', '.join(evals)}")
    pretrained = grid.path("pretrained", suite=suite, model=args.model)
    data = [grid.data_dir(params, d) for d in evals]
    if args.method == grid.PRETRAINED:
        cell = grid.Cell(args.model, grid.PRETRAINED, None, args.eval)
        made_by = [f"rib evaluate {pretrained} (every dataset of the grid: {', '.join(evals)})"]
        stage = f"evaluate-pretrained@{model_slug(args.model)}"
    else:
        if args.method not in params["grid"]["methods"]:
            raise RibError(f"method {args.method!r} is not in grid.methods ({', '.join(params['grid']['methods'])})")
        if args.dataset not in grid.finetune_datasets(params):
            raise RibError(f"fine-tuning dataset {args.dataset!r} is not one the grid fine-tunes on "
                           f"({', '.join(grid.finetune_datasets(params))})")
        cell = grid.Cell(args.model, args.method, args.dataset, args.eval)

        def checkpoint(entry):
            return grid.path("finetuned", suite=suite, model=args.model, method=entry, dataset=args.dataset)

        def training(entry):
            lines = [(f"{checkpoint(entry)}  <- rib finetune {args.model} {entry} {args.dataset}: "
                      f"{pretrained}, {grid.data_dir(params, args.dataset)} (fine-tuning part)")]
            start = init_entry(params, entry)
            if start:
                lines = training(start) + [lines[0] + f", starts from {checkpoint(start)}"]
            ref = grid.reference_dataset(params, args.model, entry)
            if ref:
                lines[-1] += f", importance weights on {grid.data_dir(params, ref)}"
            return lines

        if entry_info(params, args.method).kind == "weights":
            made_by = [f"rib combine {args.model} {args.method} {args.dataset}: {pretrained} + "
                       + ", ".join(checkpoint(n) for n in trained_ingredients(params, args.method))]
            for name in trained_ingredients(params, args.method):
                made_by += training(name)
            stage = f"combine-{args.method}@{model_slug(args.model)}-{args.dataset}"
        else:
            made_by = [f"rib evaluate {checkpoint(args.method)}"] + training(args.method)
            stage = f"evaluate-finetuned@{model_slug(args.model)}-{args.method}-{args.dataset}"
    spec = get_model(args.model, params)
    made_by.append(f"{pretrained}  <- " + (f"rib pretrain on {grid.data_dir(params, spec.pretrain_corpus)}"
                                           if spec.pretrain_corpus else f"rib models fetch {args.model}"))
    target = cell.path(suite)
    print(f"cell:  {target}")
    if Path(target).exists():
        rec = read_record(target)
        print(f"value: top-1 {100 * rec['top1']:.2f}% on {rec['n']} images ({rec['subset']}), written {rec.get('time', '?')}")
    else:
        print("value: not computed yet")
    print("made by:")
    for line in made_by:
        print(f"  {line}")
    print(f"  datasets: {', '.join(data)}")
    print("regenerate:")
    print(f"  snakemake --cores all {target}" + ("" if args.params == "params.yaml" else f" --configfile {args.params}"))
    print(f"  dvc repro {stage}")
    return 0


def _same_value(value, ref) -> bool:
    if isinstance(value, bool) or isinstance(ref, bool):
        return value is ref
    if isinstance(value, (int, float)) and isinstance(ref, (int, float)):
        return float(value) == float(ref)
    return value == ref


def cmd_methods(args, params) -> int:
    """The method registry (each method's kind, what it does, its settings with defaults and the
    reference code's values), then every entry of the params file with the values it runs with,
    each marked against the paper's own code (FieteLab/ImageNet-RIB)."""
    from .config import method_schedule
    from .methods import METHODS, REFERENCE_SCHEDULE, implementation

    users: dict[str, list[str]] = {}
    for entry in params["methods"]:
        users.setdefault(implementation(params, entry), []).append(entry)
    print("Registered methods, with their defaults; [ref: X] is the value in the paper's code "
          "(FieteLab/ImageNet-RIB) where it has the method:")
    for name, info in METHODS.items():
        where = f"the reference code's {info.reference}" if info.reference else "not in the reference code"
        print(f"{name} ({info.kind}; {where}): {info.summary}")
        for key, spec in info.options.items():
            note = f"  # {spec['description']}" if "description" in spec else ""
            mark = f"  [ref: {spec['reference']!r}]" if "reference" in spec else ""
            print(f"    {key}: {spec.get('default')!r}{mark}{note}")
        if users.get(name):
            print(f"    entries in {args.params}: {', '.join(users[name])}")
    print(f"\nEntries of {args.params}, with the values they run with:")
    for entry in params["methods"]:
        config = method_schedule(params, entry)
        info = METHODS[config["method"]]
        keys = [k for k in REFERENCE_SCHEDULE if info.kind == "train"] + [k for k in info.options if k in config]
        keys += ["seed"] if "seed" in params["methods"][entry] else []
        if not info.reference:
            print(f"{entry} = {config['method']} (not in the reference code)")
            print("    settings: " + ", ".join(f"{k} {config[k]!r}" for k in keys))
            continue
        refs = {**(REFERENCE_SCHEDULE if info.kind == "train" else {}),
                **{k: spec["reference"] for k, spec in info.options.items() if "reference" in spec}}
        same = [k for k in keys if k in refs and _same_value(config[k], refs[k])]
        differ = [k for k in keys if k in refs and k not in same]
        other = [k for k in keys if k not in refs]
        print(f"{entry} = {config['method']} (the reference code's {info.reference})")
        if same:
            print("    as the reference code: " + ", ".join(f"{k} {config[k]!r}" for k in same))
        if differ:
            print("    departs from it: "
                  + ", ".join(f"{k} {config[k]!r} (reference code: {refs[k]!r})" for k in differ))
        if other:
            print("    not settings of the reference code: " + ", ".join(f"{k} {config[k]!r}" for k in other))
    return 0


def cmd_dvc(args, params) -> int:
    from .dvc_pipeline import render

    out = args.out
    if out is None:
        if Path(args.params).resolve() != Path("params.yaml").resolve():
            raise RibError(f"--out: where to write the DVC pipeline of {args.params} (dvc.yaml is params.yaml's)")
        out = "dvc.yaml"
    text = render(params, args.params, out)
    if args.check:
        current = Path(out).read_text() if Path(out).exists() else ""
        if current != text:
            raise RibError(f"{out}: out of date with {args.params}; regenerate it with "
                           f"`rib{'' if out == 'dvc.yaml' else ' --params ' + args.params} dvc"
                           f"{'' if out == 'dvc.yaml' else ' --out ' + out}`")
        print(f"{out}: up to date with {args.params}")
        return 0
    from .io import atomic_path

    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    print(f"wrote {out} ({text.count(chr(10))} lines) from {args.params}")
    return 0


def cmd_plan(args, params) -> int:
    import json

    from .plan import make_plan, render

    plan = make_plan(params, args.params, overrides=args.throughput, throughputs_file=args.throughputs)
    print(json.dumps(plan.as_dict(), indent=1) if args.json else render(plan))
    return 0


def cmd_serve(args, params) -> int:
    from .server import serve, serve_while

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        return serve_while(command, args.socket)
    if not args.socket:
        raise RibError("rib serve: --socket SOCKET is required (or give a command to run: rib serve -- CMD ...)")
    return serve(args.socket, idle_timeout=args.idle_timeout, parent=args.parent)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except MemoryError:  # so little memory left that even the message could not be composed
        sys.stderr.write("rib: error: ran out of CPU memory: lower train.batch_size or evaluate.batch_size, or set "
                         "runtime.preload: false\n")
        return 2


def _main(argv: list[str] | None) -> int:
    from .progress import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.func is not cmd_serve:
        _log_slurm_job()
    try:
        params = load(args.params)
        return args.func(args, params)
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        return 128 + stop.signum  # what a shell reports for a process ended by that signal
    except TrainingStopped as stop:
        log.warning("%s", stop)
        return 3
    except DamagedFileError as err:
        from .verify import handle_damaged

        print(f"rib: error: {handle_damaged(err)}", file=sys.stderr)
        return 2
    except RibError as err:
        print(f"rib: error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as err:
        kind = out_of_memory(err)
        if kind is None:
            raise
        print(f"rib: error: {_memory_advice(args, kind, err)}", file=sys.stderr)
        return 2


def _memory_advice(args, kind: str, err: BaseException) -> str:
    """Running out of memory, said with the settings of this command that decide how much it needs."""
    command = args.command
    if command in ("finetune", "pretrain"):
        what = f"{command} {getattr(args, 'method', '') or getattr(args, 'model', '')}".strip()
        entry = getattr(args, "method", None)
        settings = ("lower train.batch_size" + (f" (or methods.{entry}.batch_size)" if entry else "")
                    + " or train.precision (bf16/fp16 on a GPU) in the params file; a smaller batch changes the "
                    "training, so rib does not change it for you")
    else:
        what = command
        settings = "lower evaluate.batch_size in the params file, or set it to auto"
    if kind == "CPU":
        settings += "; for CPU memory also consider runtime.preload: false and fewer runtime.loader_workers"
    return str(memory_error(kind, err, what, settings))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
