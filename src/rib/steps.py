"""The pipeline's steps as Python functions: what each ``rib`` subcommand does, for a notebook or a
script. The command line (:mod:`rib.cli`) only parses its arguments and calls these.

Every step takes the configuration first: a params dict, or the path of a params file (loaded and
validated as ``rib --params`` does). Paths a step reads or writes default to the pipeline's own
(the job graph's, :mod:`rib.jobs`, and the file layout of :mod:`rib.grid`; an evaluation's cells
go where its checkpoint's own cells belong), so inside a project folder one cell is::

    from rib import steps

    params = steps.load_params("params.yaml")
    ckpt = steps.finetune(params, "mini_vit.narrow", "ft", "sketch")   # -> checkpoints/.../model.pt
    records = steps.evaluate(params, ckpt)                              # -> results/.../<eval>.json

Heavy libraries (torch, timm) are imported by the steps that need them, not by this module.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .config import ConfigError, load
from .errors import MissingFileError, RibError

log = logging.getLogger("rib")

Params = Union[dict, str, os.PathLike]
PathLike = Union[str, os.PathLike]


def load_params(params: Params) -> dict:
    """A validated configuration: ``params`` itself when it is already one (its plugins loaded, once
    per process), else the file it names."""
    if isinstance(params, dict):
        from . import plugins

        plugins.load(params)
        return params
    return load(str(params))


def _graph(params: dict):
    from .jobs import Graph

    return Graph(params)


class _Defaults:
    """The pipeline's paths for one job (its inputs and outputs in the job graph), looked up only
    when a step is called without a path: a call that names every file needs no graph."""

    def __init__(self, params: dict, rule: str, **wildcards: str):
        self.params, self.rule, self.wildcards = params, rule, wildcards
        self._job = None

    @property
    def job(self):
        if self._job is None:
            self._job = _graph(self.params).job(self.rule, **self.wildcards)
        return self._job

    def input(self, given, name: str) -> str | None:
        return str(given) if given else _first(self.job.inputs().get(name))

    def inputs(self, given, name: str) -> list[str]:
        return [str(p) for p in given] if given else self.job.inputs()[name]

    def output(self, given) -> str:
        return str(given) if given else self.job.outputs[0]

    def folder(self, given) -> str:
        """The folder the job writes (an evaluation's or a combination's cells)."""
        return str(given) if given else self.job.fill(self.job.outs[0])


def _torch_setup(params: dict, threads: int | None):
    import torch

    from .train import resolve_device

    torch.set_num_threads(threads or params["runtime"]["threads"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    return resolve_device(params["runtime"]["device"])


def _first(paths: list[str] | None) -> str | None:
    return paths[0] if paths else None


def validate(params: Params, params_file: str = "params.yaml") -> str:
    """Check the configuration and that timm/open_clip know every model; a one-line summary of the grid."""
    from . import grid
    from .models.registry import check_available, get_model

    params = load_params(params)
    for name in params["grid"]["models"]:
        check_available(get_model(name, params))
    n_jobs = sum(1 for _ in grid.finetune_jobs(params))
    n_cells = sum(1 for _ in grid.cells(params))
    return (f"{params_file}: valid (suite {params['suite']}, {len(params['grid']['models'])} models, "
            f"{n_jobs} fine-tuning jobs, {n_cells} cells)")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def generate(params: Params, dataset: str, out: PathLike | None = None, *, progress: bool = True) -> str:
    """Generate one dataset of a synthetic suite into ``out`` (default: its raw folder)."""
    from . import grid
    from .data.suites import get_suite
    from .data.synthetic.generate import generate as make

    params = load_params(params)
    suite = get_suite(params)
    if not suite.synthetic:
        raise RibError(f"suite {suite.name!r} is not synthetic; its datasets are downloaded, not generated")
    if suite.dataset(dataset).source is not None:  # a plugin's dataset
        raise RibError(f"dataset {dataset!r} is not generated; `rib data fetch {dataset}` copies it from its source")
    out = str(out or grid.data_dir(params, dataset, "raw"))
    t0 = time.time()
    n = make(params, dataset, out, show_progress=progress)
    log.info("generated %s: %d images in %.1fs -> %s", dataset, n, time.time() - t0, out)
    return out


def fetch(params: Params, dataset: str, out: PathLike | None = None, *, params_file: str = "params.yaml",
          progress: bool = True) -> str:
    """Download, verify and unpack a dataset of a real suite (default: into its raw folder)."""
    from . import grid
    from .data.fetch import fetch as download
    from .data.suites import get_suite

    params = load_params(params)
    suite = get_suite(params)
    out = str(out or grid.data_dir(params, dataset, "raw"))
    download(suite.dataset(dataset), out, downloads=params["data"]["downloads"], label_space=suite.label_space,
             params_file=params_file, show_progress=progress)
    return out


def add(params: Params, dataset: str, path: PathLike, out: PathLike | None = None, *, progress: bool = True) -> str:
    """Ingest a dataset downloaded by hand (a folder or an archive of it) as its raw folder."""
    from . import grid
    from .data.fetch import add as ingest
    from .data.suites import get_suite

    params = load_params(params)
    suite = get_suite(params)
    out = str(out or grid.data_dir(params, dataset, "raw"))
    ingest(suite.dataset(dataset), str(path), out, label_space=suite.label_space, show_progress=progress)
    return out


def prepare(params: Params, dataset: str, raw: PathLike | None = None, out: PathLike | None = None, *,
            progress: bool = True) -> dict:
    """Index, verify and split a dataset's raw folder; returns the prepared dataset's info."""
    from . import grid
    from .data.manifest import prepare as index
    from .data.suites import get_suite

    params = load_params(params)
    suite = get_suite(params)
    raw = str(raw or grid.data_dir(params, dataset, "raw"))
    out = str(out or grid.data_dir(params, dataset))
    data = params["data"]
    info = index(suite.dataset(dataset), raw, out, label_space=suite.label_space,
                 fraction=params["split"]["heldout_fraction"], seed=params["split"]["seed"],
                 skip_corrupt=data["skip_corrupt_images"], corruption_per_leaf=data["corruption_subset"],
                 class_map_version=f"{suite.name}/{suite.class_map_version}",
                 by_photo=params["split"]["leak_free"], show_progress=progress)
    log.info("prepared %s: %d images, %d classes, parts %s, %d unreadable left out -> %s", dataset,
             info["num_images"], info["num_classes"], info["parts"], info["skipped_images"], out)
    return info


def cache(params: Params, dataset: str, prep: str, out: PathLike, *, data: PathLike | None = None,
          verify: bool = False, progress: bool = True):
    """Build (or, with ``verify``, check) the preprocessed-image cache of one dataset in one
    preprocessing (a key such as ``v2-224px-bicubic-crop0.875-center``); returns the opened cache."""
    from . import grid
    from .data import cache as caches
    from .data.manifest import load_prepared

    params = load_params(params)
    data = str(data or grid.data_dir(params, dataset))
    prepared = load_prepared(data)
    key = caches.prep_from_key(prep)
    if verify:
        return caches.open_cache(str(out), prepared, key, verify=True)
    if prepared.name != dataset:
        raise RibError(f"{data}: holds dataset {prepared.name!r}, not {dataset!r}")
    caches.build(prepared, key, str(out), workers=params["runtime"]["loader_workers"], show_progress=progress)
    opened = caches.open_cache(str(out), prepared, key)  # readable as written (build hashed each shard)
    log.info("saved %s", out)
    return opened


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def fetch_weights(params: Params, model: str, out: PathLike | None = None, *, weights: PathLike | None = None) -> str:
    """Save a published model's pretrained weights (or a local file of them) as a checkpoint."""
    from . import grid
    from .data.suites import get_suite
    from .models import network
    from .models.registry import check_available, get_model
    from .train import resolve_device

    params = load_params(params)
    spec = get_model(model, params)
    check_available(spec)
    out = str(out or grid.path("pretrained", suite=params["suite"], model=spec.name))
    network.fetch(spec, out, list(get_suite(params).label_space), weights_file=weights,
                  device=str(resolve_device(params["runtime"]["device"])))
    log.info("saved %s", out)
    return out


def _reference_loader(data_dir, prep, show_progress: bool):
    """Pretraining-domain images for importance weights: ``samples`` rows drawn with ``seed`` (from
    the photos no leak-free evaluation uses, where the dataset was split by photo)."""
    def load_rows(samples: int, seed: int):
        from .data.loading import ImageDataset, preload, sample_rows
        from .data.manifest import load_prepared

        prepared = load_prepared(data_dir)
        part = "finetune" if prepared.info.get("split", {}).get("by_photo") else None
        ds = ImageDataset(prepared.root, sample_rows(prepared, part, samples, seed), prep, prepared.border)
        return preload(ds, f"{prepared.name} (reference)", show_progress)
    return load_rows


@dataclass
class _Training:
    """One training run: what it trains, on what, and what its checkpoint records."""

    model: object
    spec_name: str
    arch: str
    arch_kwargs: dict
    label_space: list
    prep: object
    method: object
    data_dir: str
    part: str | None
    schedule: dict
    seed: int
    meta: dict
    reference_dir: str | None = None


def _train_and_save(params: dict, run: _Training, *, out: str, state: str | None, device, cache, progress: bool,
                    stop_after_epoch: int | None, on_epoch_end=None, before_done=None) -> str:
    """Train, save the checkpoint at ``out``, call ``before_done`` and only then remove the resume
    state (a run killed before the end resumes, at worst after its last epoch)."""
    from .data.cache import find as find_cache
    from .data.labels import LabelProjection
    from .data.loading import open_dataset
    from .data.manifest import load_prepared
    from .models import network
    from .provenance import provenance
    from .train import Schedule, fingerprint, fit

    prepared = load_prepared(run.data_dir)
    data = open_dataset(prepared, run.part, run.prep, preload_images=params["runtime"]["preload"],
                        show_progress=progress, cache=find_cache(cache, prepared, run.prep))
    projection = LabelProjection(prepared.classes, run.label_space)
    sched = Schedule.from_config(run.schedule)
    state = state or str(Path(out).with_name("state.pt"))
    run_fp = fingerprint(meta=run.meta, manifest=prepared.info["manifest_sha256"], seed=run.seed)
    reference = _reference_loader(run.reference_dir, run.prep, progress) if run.reference_dir else None
    t0 = time.time()
    interruptions: list[dict] = []
    history, final, wrapper = fit(run.model, run.method, data, projection, run.prep, sched, seed=run.seed,
                                  device=device, state_path=state, run_fingerprint=run_fp,
                                  workers=params["runtime"]["loader_workers"], desc=run.meta.get("method", "train"),
                                  show_progress=progress, stop_after_epoch=stop_after_epoch,
                                  reference=reference, interruptions=interruptions, on_epoch_end=on_epoch_end)
    meta = {**run.meta, "schedule": run.schedule, "history": history, "interruptions": interruptions,
            "train_images": len(data),
            "train_manifest_sha256": prepared.info["manifest_sha256"], "seed": run.seed,
            "train_seconds": round(time.time() - t0, 3), **provenance(device)}
    network.save(out, final, name=run.spec_name, arch=run.arch, arch_kwargs=run.arch_kwargs,
                 label_space=run.label_space, preprocessing=run.prep, meta=meta, wrapper=wrapper)
    if before_done is not None:
        before_done()
    Path(state).unlink(missing_ok=True)
    log.info("saved %s", out)
    return out


SNAPSHOT_FILE = "epoch-{epoch}.pt"


def pretrain(params: Params, model: str, *, data: PathLike | None = None, out: PathLike | None = None,
             state: PathLike | None = None, threads: int | None = None, progress: bool = True,
             stop_after_epoch: int | None = None, snapshots: PathLike | None = None) -> str:
    """Pretrain a rib-mini model on its corpus (default: the pipeline's corpus folder and checkpoint).
    ``snapshots``: a folder that receives the model at the intermediate epochs of
    ``robustness.snapshots`` (default: the pipeline's when ``out`` is left out too)."""
    import torch

    from .config import snapshot_epochs
    from .data.suites import get_suite
    from .methods import get_method
    from .models import network
    from .models.registry import get_model

    params = load_params(params)
    spec = get_model(model, params)
    corpus = spec.pretrain_corpus
    if corpus is None:
        raise RibError(f"model {spec.name!r} is not pretrained by the pipeline (weights: {spec.weights})")
    paths = _Defaults(params, "pretrain", model=model)
    if snapshots is None and out is None:
        snapshots = paths.job.vars.get("snapshots")
    data, out = paths.input(data, "data"), paths.output(out)
    device = _torch_setup(params, threads)
    suite = get_suite(params)
    pre = params["pretrain"]
    schedule = {**{k: pre[k] for k in ("optimizer", "batch_size", "lr", "momentum", "weight_decay", "warmup_steps")},
                "epochs": pre["epochs"][corpus], "precision": params["train"]["precision"]}
    torch.manual_seed(params["seed"])
    net = network.build(spec, len(suite.label_space))
    run = _Training(net, spec.name, spec.arch, spec.arch_kwargs, list(suite.label_space), spec.preprocessing,
                    get_method("ft", {**schedule, "entry": "pretrain"}), str(data), None, schedule, params["seed"],
                    {"kind": "pretrained", "method": "pretrain", "corpus": corpus, "suite": suite.name,
                     "parameters": network.count_parameters(net), "feature_dim": network.feature_dim(net)})
    if not snapshots:
        return _train_and_save(params, run, out=str(out), state=state and str(state), device=device, cache=None,
                               progress=progress, stop_after_epoch=stop_after_epoch)
    epochs = snapshot_epochs(params, corpus)
    run.meta["snapshot_epochs"] = epochs  # in the run's fingerprint: a state kept without them is not resumed
    state = Path(state or Path(out).with_name("state.pt"))
    snaps = _Snapshots(run, Path(snapshots), state.with_name(f".{state.stem}-snapshots"), epochs)
    written = _train_and_save(params, run, out=str(out), state=str(state), device=device, cache=None,
                              progress=progress, stop_after_epoch=stop_after_epoch, on_epoch_end=snaps.keep,
                              before_done=snaps.publish)
    snaps.clean()
    return written


class _Snapshots:
    """Pretraining's snapshots (robustness.snapshots): the model at each of ``epochs``, a checkpoint
    of kind ``snapshot``. They are written into ``staged``, a folder beside the resume state that no
    pipeline deletes (Snakemake and DVC remove a job's outputs before running it again), so a run
    stopped and resumed has all of them; the finished run copies them into ``folder``, its output,
    before the resume state goes, and removes ``staged`` last."""

    def __init__(self, run: _Training, folder: Path, staged: Path, epochs: list[int]):
        self.run, self.folder, self.staged, self.epochs = run, folder, staged, epochs
        self.names = [SNAPSHOT_FILE.format(epoch=e) for e in epochs]
        staged.mkdir(parents=True, exist_ok=True)
        for old in staged.glob(SNAPSHOT_FILE.format(epoch="*")):  # of other settings
            if old.name not in self.names:
                old.unlink()

    def keep(self, epoch: int, module) -> None:
        from .models import network

        if epoch in self.epochs:
            run = self.run
            meta = {**run.meta, "kind": "snapshot", "epoch": epoch, "epochs": run.schedule["epochs"], "seed": run.seed}
            network.save(self.staged / SNAPSHOT_FILE.format(epoch=epoch), module, name=run.spec_name, arch=run.arch,
                         arch_kwargs=run.arch_kwargs, label_space=run.label_space, preprocessing=run.prep, meta=meta)
            log.info("kept the snapshot of epoch %d", epoch)

    def publish(self) -> None:
        from .io import atomic_path, link_or_copy

        missing = [n for n in self.names if not (self.staged / n).exists()]
        if missing:
            raise RibError(f"{self.staged}: the snapshots {', '.join(missing)} are missing; delete that folder and "
                           "the resume state beside it to pretrain again")
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob(SNAPSHOT_FILE.format(epoch="*")):
            if old.name not in self.names:
                old.unlink()
        for name in self.names:
            with atomic_path(self.folder / name, "snapshot") as tmp:
                link_or_copy(self.staged / name, tmp)
        log.info("%d snapshot(s) in %s", len(self.names), self.folder)

    def clean(self) -> None:
        import shutil

        shutil.rmtree(self.staged, ignore_errors=True)


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


def finetune(params: Params, model: str, method: str, dataset: str, *, pretrained: PathLike | None = None,
             data: PathLike | None = None, out: PathLike | None = None, init: PathLike | None = None,
             reference: PathLike | None = None, cache: list[str] | None = None, state: PathLike | None = None,
             threads: int | None = None, progress: bool = True, stop_after_epoch: int | None = None,
             params_file: str = "params.yaml") -> str:
    """Fine-tune a pretrained model on the fine-tuning part of one dataset with one methods entry;
    returns the checkpoint. Paths left out are the pipeline's (LP-FT's ``init``: the linear probe's
    checkpoint; EWC's and MAS's ``reference``: the pretraining-domain images)."""
    from .config import method_schedule
    from .io import sha256_file
    from .methods import entry_info, get_method, init_entry
    from .models import network
    from .models.registry import canonical_name

    params = load_params(params)
    entry = method
    if entry not in params["methods"]:
        raise ConfigError(f"{params_file}: methods.{entry}: no settings for method {entry!r}")
    info = entry_info(params, entry)
    if info.kind != "train":
        raise RibError(f"method {entry!r} combines finished models without training; run `rib combine`")
    paths = _Defaults(params, "finetune", model=model, method=entry, dataset=dataset)
    pretrained, data, out = paths.input(pretrained, "pretrained"), paths.input(data, "data"), paths.output(out)
    schedule = method_schedule(params, entry)
    seed = int(schedule.get("seed", params["seed"]))
    device = _torch_setup(params, threads)
    ckpt = network.load(pretrained)
    pretrained_sha = sha256_file(pretrained)
    if ckpt.name != canonical_name(model):
        raise RibError(f"{pretrained}: holds model {ckpt.name!r}, not {model!r}")
    start = init_entry(params, entry)
    meta = {"kind": "finetuned", "method": entry, "implementation": schedule["method"],
            "finetune_dataset": dataset, "suite": params["suite"], "pretrained": pretrained,
            "pretrained_sha256": pretrained_sha, "parameters": network.count_parameters(ckpt.model),
            "feature_dim": network.feature_dim(ckpt.model)}
    net = ckpt.model
    if start is not None:
        given, init = init, paths.input(init, "init")
        if not given and (not init or not Path(init).exists()):
            raise RibError(f"methods.{entry} starts from the finished {start!r} checkpoint of this model and dataset"
                           f"{f' ({init}, not made yet)' if init else ''}; pass it with --init (the pipeline does: "
                           f"it is the {start!r} job's output)")
        net = _check_init(init, entry=entry, init_entry=start, dataset=dataset, pretrained_sha=pretrained_sha).model
        meta.update(init=str(init), init_sha256=sha256_file(init))
    elif init:
        raise RibError(f"--init: methods.{entry} ({schedule['method']}) starts from the pretrained model")
    reference = paths.input(reference, "reference") if info.needs_reference else reference
    if info.needs_reference and not reference:
        raise RibError(f"methods.{entry} needs pretraining-domain images for its importance weights; pass the "
                       "prepared folder with --reference (the pipeline passes the model's pretraining corpus, "
                       "else grid.source)")
    if reference:
        meta["reference"] = str(reference)
    run = _Training(net, ckpt.name, ckpt.arch, ckpt.arch_kwargs, ckpt.label_space, ckpt.preprocessing,
                    get_method(schedule["method"], schedule), data, "finetune", schedule, seed, meta,
                    reference_dir=str(reference) if info.needs_reference else None)
    return _train_and_save(params, run, out=out, state=state and str(state), device=device, cache=cache,
                           progress=progress, stop_after_epoch=stop_after_epoch)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def _eval_settings(params: dict, device, cache, progress: bool) -> dict:
    ev = params["evaluate"]
    return dict(scoring=ev["scoring"], batch_size=ev["batch_size"], device=device,
                precision=params["train"]["precision"], workers=params["runtime"]["loader_workers"],
                preload=params["runtime"]["preload"], show_progress=progress, caches=cache,
                engine={k: params["runtime"][k] for k in ("channels_last", "compile", "gpu_decode")
                        if k in params["runtime"]})


def _eval_datasets(params: dict, folders):
    from . import grid
    from .data.manifest import load_prepared

    folders = folders or [grid.data_dir(params, d) for d in grid.eval_datasets(params)]
    return [load_prepared(str(d)) for d in folders]


def _write_cells(out_dir, datasets, records, common: dict) -> list[dict]:
    from .io import write_record

    out_dir = Path(out_dir)
    written = []
    for prepared, rec in zip(datasets, records):
        record = {**common, **rec, "manifest_sha256": prepared.info["manifest_sha256"],
                  "skipped_images": prepared.info.get("skipped_images", 0)}
        write_record(out_dir / f"{prepared.name}.json", record)
        written.append(record)
    return written


def evaluate(params: Params, checkpoint: PathLike, datasets: list[PathLike] | None = None, *,
             out_dir: PathLike | None = None, cache: list[str] | None = None, threads: int | None = None,
             progress: bool = True) -> list[dict]:
    """Evaluate a checkpoint on prepared datasets (default: the source set and every dataset of the
    grid); writes one cell (JSON) per dataset into ``out_dir`` (default: the pipeline's) and returns them."""
    from .evaluate import evaluate_checkpoint
    from .grid import PRETRAINED
    from .io import sha256_file
    from .models import network
    from .provenance import provenance

    params = load_params(params)
    device = _torch_setup(params, threads)
    ckpt = network.load(str(checkpoint))
    meta = ckpt.meta
    finetuned_on = meta.get("finetune_dataset")
    prepared = _eval_datasets(params, datasets)
    records = evaluate_checkpoint(ckpt.model, ckpt.label_space, ckpt.preprocessing, prepared,
                                  finetuned_on=finetuned_on, **_eval_settings(params, device, cache, progress))
    common = {"suite": meta.get("suite", params["suite"]), "model": ckpt.name,
              "method": meta["method"] if meta.get("kind") == "finetuned" else PRETRAINED,
              "finetune_dataset": finetuned_on, "scoring": params["evaluate"]["scoring"],
              "model_info": {"parameters": meta.get("parameters"), "feature_dim": meta.get("feature_dim"),
                             "arch": ckpt.arch},
              "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
              "pretrained_sha256": meta.get("pretrained_sha256") or sha256_file(checkpoint),
              "method_settings": meta.get("schedule"), "train_seconds": meta.get("train_seconds"),
              "seed": meta.get("seed", params["seed"]), **provenance(device)}
    paths = (_Defaults(params, "evaluate_finetuned", model=ckpt.name, method=meta["method"], dataset=finetuned_on)
             if meta.get("kind") == "finetuned" else _Defaults(params, "evaluate_pretrained", model=ckpt.name))
    return _write_cells(paths.folder(out_dir), prepared, records, common)


def evaluate_snapshots(params: Params, snapshots: PathLike, datasets: list[PathLike] | None = None, *,
                       out: PathLike | None = None, cache: list[str] | None = None, threads: int | None = None,
                       progress: bool = True) -> dict:
    """Evaluate every pretraining snapshot in the folder ``snapshots`` (``rib pretrain
    --snapshots``) on the source set and every dataset of the grid: one record of top-1 accuracy per
    snapshot and dataset, written to ``out`` (default: the pipeline's), the baseline points of
    effective robustness (:mod:`rib.robustness`)."""
    import re

    from .config import snapshot_epochs
    from .evaluate import evaluate_checkpoint
    from .io import sha256_file, write_record
    from .models import network
    from .models.registry import canonical_name, get_model
    from .provenance import provenance

    params = load_params(params)
    folder = Path(snapshots)
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: no such folder of pretraining snapshots (rib pretrain --snapshots)")
    files = {int(re.sub(r"\D", "", p.stem) or 0): p for p in folder.glob(SNAPSHOT_FILE.format(epoch="*"))}
    found = sorted(files)
    snaps = [network.load(str(files[e])) for e in found]
    # the model: the snapshots' own, else (pretraining had too few epochs for any) the folder's
    name = snaps[0].name if snaps else canonical_name(folder.parent.name)
    # every epoch robustness.snapshots asks for, no more (a snapshot moved aside as damaged is rebuilt
    # by pretraining again, never left out of the baseline unnoticed)
    corpus = get_model(name, params).pretrain_corpus
    wanted = snapshot_epochs(params, corpus) if corpus else found
    if found != wanted:
        raise RibError(f"{folder}: snapshots of epochs {found or 'none'}, robustness.snapshots asks for "
                       f"{wanted or 'none'}; pretrain {name} again (rib pretrain --snapshots)")
    device = _torch_setup(params, threads)
    prepared = _eval_datasets(params, datasets)
    points = []
    for epoch, ckpt in zip(found, snaps):
        path, meta = files[epoch], ckpt.meta
        if meta.get("kind") != "snapshot":
            raise RibError(f"{path}: a checkpoint of kind {meta.get('kind')!r}, not a pretraining snapshot")
        if ckpt.name != name:
            raise RibError(f"{path}: a snapshot of {ckpt.name!r} among the snapshots of {name!r}")
        records = evaluate_checkpoint(ckpt.model, ckpt.label_space, ckpt.preprocessing, prepared, finetuned_on=None,
                                      **_eval_settings(params, device, cache, progress))
        points.append({"epoch": meta["epoch"], "epochs": meta.get("epochs"), "checkpoint": str(path),
                       "checkpoint_sha256": sha256_file(path),
                       "top1": {d.name: r["top1"] for d, r in zip(prepared, records)},
                       "n": {d.name: r["n"] for d, r in zip(prepared, records)}})
    record = {"suite": params["suite"], "model": name, "kind": "snapshots", "scoring": params["evaluate"]["scoring"],
              "snapshots": points, "manifest_sha256": {d.name: d.info["manifest_sha256"] for d in prepared},
              **provenance(device)}
    if out is None:
        out = _Defaults(params, "evaluate_snapshots", model=name).output(None)
    write_record(out, record)
    log.info("evaluated %d snapshot(s) of %s into %s", len(points), name, out)
    return record


def combine(params: Params, model: str, method: str, dataset: str, *, pretrained: PathLike | None = None,
            ingredients: list[PathLike] | None = None, data: PathLike | None = None,
            datasets: list[PathLike] | None = None, out_dir: PathLike | None = None, cache: list[str] | None = None,
            threads: int | None = None, progress: bool = True, params_file: str = "params.yaml") -> list[dict]:
    """A weight-space method (WiSE-FT, soups, Model Stock): build its model(s) from the pretrained
    weights and finished checkpoints (default: the pipeline's), evaluate them, write and return the cells.
    A sweep (WiSE-FT's alphas) writes its headline variant's cells, each with every variant's score."""
    from .config import method_schedule
    from .data.manifest import load_prepared
    from .evaluate import evaluate_checkpoint, predict
    from .io import sha256_file
    from .methods import PRETRAINED_INGREDIENT, entry_info, get_method, trained_ingredients
    from .methods import ingredients as ingredients_of
    from .methods.weights import check_compatible
    from .models import network
    from .provenance import provenance

    params = load_params(params)
    entry = method
    if entry not in params["methods"]:
        raise ConfigError(f"{params_file}: methods.{entry}: no settings for method {entry!r}")
    if entry_info(params, entry).kind != "weights":
        raise RibError(f"method {entry!r} trains a model; run `rib finetune` and `rib evaluate`")
    paths = _Defaults(params, "combine", model=model, method=entry, dataset=dataset)
    pretrained, ingredients = paths.input(pretrained, "pretrained"), paths.inputs(ingredients, "ingredients")
    config = method_schedule(params, entry)
    names = trained_ingredients(params, entry)
    if len(ingredients) != len(names):
        raise RibError(f"methods.{entry} combines {len(names)} checkpoints ({', '.join(names)}); "
                       f"{len(ingredients)} given")
    device = _torch_setup(params, threads)
    base = network.load(pretrained)
    pretrained_sha = sha256_file(pretrained)
    theta0 = {k: v.detach().clone() for k, v in base.model.state_dict().items()}
    states, sources = {}, {}
    for name, path in zip(names, ingredients):
        ckpt = network.load(path)
        meta = ckpt.meta
        if meta.get("method") != name or meta.get("finetune_dataset") != dataset:
            raise RibError(f"{path}: expected the {name!r} checkpoint fine-tuned on {dataset!r}, found "
                           f"{meta.get('method')!r} on {meta.get('finetune_dataset')!r}")
        if meta.get("pretrained_sha256") != pretrained_sha:
            raise RibError(f"{path}: made from other pretrained weights than {pretrained}")
        if ckpt.wrapper:
            raise RibError(f"{path}: holds a {ckpt.wrapper['kind']} around the model; weight-space methods need "
                           "plain fine-tuned models")
        states[name] = ckpt.model.state_dict()
        sources[name] = {"checkpoint": path, "checkpoint_sha256": sha256_file(path)}
    try:
        check_compatible(theta0, states)
    except ValueError as err:
        raise RibError(f"methods.{entry}: {err}") from None
    every = ingredients_of(params, entry)
    if PRETRAINED_INGREDIENT in every:  # the reference's PRE: the pretrained weights
        states = {n: theta0 if n == PRETRAINED_INGREDIENT else states[n] for n in every}
        sources[PRETRAINED_INGREDIENT] = {"checkpoint": pretrained, "checkpoint_sha256": pretrained_sha}

    settings = _eval_settings(params, device, cache, progress)
    loaded: dict = {}
    own = load_prepared(str(data)) if data else next(
        (d for d in _eval_datasets(params, None) if d.name == dataset), None)
    net = base.model

    def heldout_score(state) -> float:
        """Top-1 on the held-out part of D_ft: what greedy soups and WiSE-FT's chosen alpha select by."""
        if own is None:
            raise RibError(f"methods.{entry}: needs the held-out part of {dataset!r} (--data)")
        net.load_state_dict(state)
        correct = predict(net, own, base.label_space, base.preprocessing, part="heldout", loaded=loaded, **settings)
        return float(correct.float().mean())

    variants, record = get_method(config["method"], config).variants(theta0, states, heldout_score)
    prepared = _eval_datasets(params, datasets)
    per_variant = []
    for variant, state in variants:
        net.load_state_dict(state)
        log.info("%s %s", entry, {k: v for k, v in variant.items() if k != "headline"})
        per_variant.append((variant, evaluate_checkpoint(net, base.label_space, base.preprocessing, prepared,
                                                         finetuned_on=dataset, loaded=loaded, **settings)))
    headline = next((i for i, (v, _) in enumerate(per_variant) if v.get("headline")), 0)
    variant, records = per_variant[headline]
    if len(per_variant) > 1:
        for i, rec in enumerate(records):
            rec["sweep"] = [{**{k: val for k, val in v.items() if k != "headline"}, "top1": recs[i]["top1"],
                             "n": recs[i]["n"], "subsets": recs[i]["subsets"]} for v, recs in per_variant]
    common = {"suite": params["suite"], "model": base.name, "method": entry, "finetune_dataset": dataset,
              "scoring": params["evaluate"]["scoring"],
              "model_info": {"parameters": base.meta.get("parameters"), "feature_dim": base.meta.get("feature_dim"),
                             "arch": base.arch},
              "checkpoint": None, "pretrained": pretrained, "pretrained_sha256": pretrained_sha,
              "method_settings": config,
              "combination": {"implementation": config["method"], "settings": {k: v for k, v in variant.items()
                                                                             if k != "headline"},
                              "ingredients": sources, **record},
              "seed": params["seed"], **provenance(device)}
    return _write_cells(paths.folder(out_dir), prepared, records, common)


def distance(params: Params, model: str, dataset: str, *, pretrained: PathLike | None = None,
             reference_data: PathLike | None = None, data: PathLike | None = None, out: PathLike | None = None,
             cache: list[str] | None = None, threads: int | None = None, progress: bool = True) -> dict:
    """OTDD between the pretraining-domain data and one fine-tuning dataset, on the pretrained
    model's pre-logit features; writes and returns the record."""
    import numpy as np
    import torch

    from .data.cache import find as find_cache
    from .data.loading import batches, normalize, open_dataset, sample_rows
    from .data.manifest import load_prepared
    from .distance import otdd
    from .evaluate import AUTO_BATCH
    from .io import sha256_file, write_record
    from .models import network
    from .provenance import provenance

    params = load_params(params)
    paths = _Defaults(params, "distance", model=model, dataset=dataset)
    pretrained, reference_data = paths.input(pretrained, "pretrained"), paths.input(reference_data, "reference")
    data, out = paths.input(data, "data"), paths.output(out)
    device = _torch_setup(params, threads)
    ckpt = network.load(pretrained)
    settings = params["distance"]
    net = ckpt.model.eval().to(device)
    t0 = time.time()

    def features(folder, part):
        prepared = load_prepared(folder)
        rows = sample_rows(prepared, part, settings["samples"], params["seed"])
        images = open_dataset(prepared, part, ckpt.preprocessing, preload_images=params["runtime"]["preload"],
                              show_progress=progress, rows=rows, cache=find_cache(cache, prepared, ckpt.preprocessing))
        feats = []
        with torch.inference_mode():
            size = params["evaluate"]["batch_size"]
            size = AUTO_BATCH.get(device.type, 64) if size == "auto" else size
            for batch, _ in batches(images, torch.arange(len(images)), size):
                feats.append(network.pre_logits(net, normalize(batch, ckpt.preprocessing, device)).float().cpu())
        return prepared, torch.cat(feats).numpy(), np.array([r.label for r in rows])

    ref, x1, y1 = features(reference_data, None)
    own, x2, y2 = features(data, "finetune")
    result = otdd(x1, y1, x2, y2, reg=settings["reg"], debias=settings["debias"], seed=params["seed"])
    record = {"suite": params["suite"], "model": ckpt.name, "reference": ref.name, "finetune_dataset": own.name,
              "features": "pre-logits", "feature_dim": int(x1.shape[1]), **result, "settings": settings,
              "checkpoint": pretrained, "checkpoint_sha256": sha256_file(pretrained),
              "manifest_sha256": {ref.name: ref.info["manifest_sha256"], own.name: own.info["manifest_sha256"]},
              "seed": params["seed"], "seconds": round(time.time() - t0, 3), **provenance(device)}
    write_record(out, record)
    log.info("OTDD(%s, %s) = %.4f on %d + %d images", ref.name, own.name, result["otdd"], *result["n"])
    return record


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def aggregate(params: Params, root: PathLike = ".") -> dict:
    """The cells under ``root``/results -> the long table, metrics and summary tables (reports/)."""
    from . import aggregate as tables, grid

    params = load_params(params)
    outs = {k: grid.path(k, suite=params["suite"]) for k in grid.TABLES}
    written = tables.write_tables(params, outs, root=str(root))
    log.info("aggregated %d cells into %s", len(written["cells"]), ", ".join(outs.values()))
    return written


def figures(params: Params) -> list:
    """The radar, bar, heat-map and scatter figures from the tables (reports/<suite>/figures/)."""
    from . import figures as draw, grid

    params = load_params(params)
    suite = params["suite"]
    tables = {k: grid.path(k, suite=suite) for k in grid.FIGURE_TABLES}
    written = draw.draw_all(tables, params["report"], lambda name, ext: grid.path("figure", suite=suite,
                                                                                  figure=name, ext=ext))
    log.info("%d figures written under reports/%s/figures", len(written), suite)
    return written


def usage(params: Params):
    """Time and memory of each job (Snakemake's benchmark files) per rule, into reports/<suite>/;
    returns the per-rule summary and the measured throughputs."""
    from . import usage as jobs_usage

    params = load_params(params)
    suite = params["suite"]
    return jobs_usage.write(f"logs/{suite}", f"reports/{suite}", params)


# ----------------------------------------------------------------------------------------------
# Inspection
# ----------------------------------------------------------------------------------------------
@dataclass
class CellInfo:
    """One cell of the tables: where it lives, its value, the jobs it is made by, how to remake it."""

    path: str
    record: dict | None
    made_by: list[str]
    datasets: list[str]
    snakemake: str
    dvc: str

    def render(self) -> str:
        rec = self.record
        value = (f"top-1 {100 * rec['top1']:.2f}% on {rec['n']} images ({rec['subset']}), written "
                 f"{rec.get('time', '?')}" if rec else "not computed yet")
        return "\n".join([f"cell:  {self.path}", f"value: {value}", "made by:",
                          *(f"  {line}" for line in self.made_by), f"  datasets: {', '.join(self.datasets)}",
                          "regenerate:", f"  {self.snakemake}", f"  {self.dvc}"]) + "\n"


def cell(params: Params, model: str, method: str, dataset: str | None, eval_dataset: str, *,
         params_file: str = "params.yaml") -> CellInfo:
    """Where one cell lives and what it is made from: the jobs of the graph it depends on, back to
    the pretrained model, and the commands that regenerate it."""
    from . import grid
    from .io import read_record
    from .models.registry import model_slug

    params = load_params(params)
    g = params["grid"]
    if model not in g["models"] and model_slug(model) not in map(model_slug, g["models"]):
        raise RibError(f"model {model!r} is not in grid.models ({', '.join(g['models'])})")
    evals = grid.eval_datasets(params)
    if eval_dataset not in evals:
        raise RibError(f"evaluation dataset {eval_dataset!r} is not one of {', '.join(evals)}")
    if method == grid.PRETRAINED:
        target = grid.Cell(model, method, None, eval_dataset)
    else:
        if method not in g["methods"]:
            raise RibError(f"method {method!r} is not in grid.methods ({', '.join(g['methods'])})")
        if dataset not in grid.finetune_datasets(params):
            raise RibError(f"fine-tuning dataset {dataset!r} is not one the grid fine-tunes on "
                           f"({', '.join(grid.finetune_datasets(params))})")
        target = grid.Cell(model, method, dataset, eval_dataset)
    path = target.path(params["suite"])
    graph = _graph(params)
    job = graph.writer(path)
    before = graph.upstream(job)  # checkpoints, then the pretrained model (data and caches: the datasets line)
    chain = [j for j in before if j.rule == "finetune"] + [j for j in before if j.rule in ("pretrain", "fetch_weights")]
    made_by = [f"rib {job.command}"] + [f"{j.outputs[0]}  <- rib {j.command}" for j in chain]
    datasets = [grid.data_dir(params, d) for d in evals]
    record = read_record(path) if Path(path).exists() else None
    options = "" if params_file == "params.yaml" else f" --configfile {params_file}"
    return CellInfo(path, record, made_by, datasets, f"snakemake --cores all {path}{options}", f"dvc repro {job.dvc_name}")


def verify(params: Params, root: PathLike = ".", *, all_suites: bool = False, full: bool = False,
           repair: bool = False):
    """Check every output rib wrote under ``root`` (structure and record digests; ``full``: also
    checkpoint and cache-shard digests); ``repair`` moves damaged ones aside to be rebuilt.
    Returns (outputs checked, findings)."""
    from .verify import outputs, sweep

    params = load_params(params)
    suite = None if all_suites else params["suite"]
    return len(outputs(Path(root), suite)), sweep(str(root), suite, full=full, repair=repair)


def write_dvc(params: Params, params_file: str = "params.yaml", out: PathLike | None = None, *,
              check: bool = False) -> str:
    """Write (or, with ``check``, compare with) the DVC pipeline of ``params_file``; returns what happened."""
    from .dvc_pipeline import render
    from .io import atomic_path

    params = load_params(params)
    if out is None:
        if Path(params_file).resolve() != Path("params.yaml").resolve():
            raise RibError(f"--out: where to write the DVC pipeline of {params_file} (dvc.yaml is params.yaml's)")
        out = "dvc.yaml"
    out = str(out)
    text = render(params, params_file, out)
    if check:
        current = Path(out).read_text() if Path(out).exists() else ""
        if current != text:
            raise RibError(f"{out}: out of date with {params_file}; regenerate it with "
                           f"`rib{'' if out == 'dvc.yaml' else ' --params ' + params_file} dvc"
                           f"{'' if out == 'dvc.yaml' else ' --out ' + out}`")
        return f"{out}: up to date with {params_file}"
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    return f"wrote {out} ({text.count(chr(10))} lines) from {params_file}"
