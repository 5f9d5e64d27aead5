"""The ``rib`` command line: argument parsing and dispatch to the pipeline's steps (:mod:`rib.steps`).

Snakemake rules and DVC stages are thin wrappers around these subcommands; each reads
``params.yaml`` (``--params``), validates it, and writes its outputs atomically. Heavy libraries
(torch, timm) are imported only by the steps that need them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__, grid, plan, server, status, steps
from .config import load
from .errors import DamagedFileError, RibError, TrainingInterrupted, TrainingStopped, memory_advice, out_of_memory

log = logging.getLogger("rib")


# Each subcommand: (args, params) -> exit status; the step does the work.
def _io(a) -> dict:
    """Options every torch step shares."""
    return {"threads": a.threads, "progress": not a.quiet, **({"cache": a.cache} if "cache" in a else {})}


def _train(a) -> dict:
    return {"data": a.data, "out": a.out, "state": a.state, "stop_after_epoch": a.stop_after_epoch, **_io(a)}


def cmd_cache(a, p) -> int:
    opened = steps.cache(p, a.dataset, a.prep, a.out, data=a.data, verify=a.cache_command == "verify",
                         progress=not a.quiet)
    if a.cache_command == "verify":
        print(f"{a.out}: valid ({opened.n} images, {len(opened.shards)} shard(s), digests match)")
    return 0


def cmd_verify(a, p) -> int:
    """Exit 1 when an output is damaged (and, without --repair, left in place)."""
    total, findings = steps.verify(p, a.root, all_suites=a.all_suites, full=a.full, repair=a.repair)
    for finding in findings:
        print(f"damaged: {finding.line()}")
    what = "digests and structure" if a.full else "structure and record digests"
    print(f"{total} outputs checked ({what}): {len(findings)} damaged" + (", moved aside" if findings and a.repair else ""))
    return 1 if findings and not a.repair else 0


def cmd_compare(a, p) -> int:
    from . import published

    return _say(published.render(published.compare(p)))


def cmd_usage(a, p) -> int:
    from .usage import markdown

    return _say(markdown(*steps.usage(p)))


def _ok(_result) -> int:
    return 0


def _say(text: str) -> int:
    if text:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


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
    s.set_defaults(func=lambda a, p: _say(steps.validate(p, a.params)))

    s = sub.add_parser("grid", parents=[common], help="list the grid's output files")
    s.add_argument("what", choices=["cells", "finetune", "datasets"], nargs="?", default="cells")
    s.set_defaults(func=lambda a, p: _say("\n".join(grid.listing(p, a.what))))

    data = sub.add_parser("data", help="dataset steps").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("generate", parents=[common], help="generate one dataset of a synthetic suite")
    s.add_argument("dataset")
    s.add_argument("--out", required=True)
    s.set_defaults(func=lambda a, p: _ok(steps.generate(p, a.dataset, a.out, progress=not a.quiet)))
    s = data.add_parser("fetch", parents=[common], help="download, verify and unpack a dataset of a real suite")
    s.add_argument("dataset")
    s.add_argument("--out", default=None, help="raw dataset folder (default: data/<suite>/raw/<dataset>)")
    s.set_defaults(func=lambda a, p: _ok(steps.fetch(p, a.dataset, a.out, params_file=a.params, progress=not a.quiet)))
    s = data.add_parser("add", parents=[common], help="ingest a dataset you downloaded yourself (folder or archive)")
    s.add_argument("dataset")
    s.add_argument("path", help="the dataset's folder, or a .tar/.tar.gz/.zip of it")
    s.add_argument("--out", default=None, help="raw dataset folder (default: data/<suite>/raw/<dataset>)")
    s.set_defaults(func=lambda a, p: _ok(steps.add(p, a.dataset, a.path, a.out, progress=not a.quiet)))
    s = data.add_parser("list", parents=[common],
                        help="each dataset of the suite: missing / present / prepared, images, size on disk, how to get it")
    s.add_argument("--json", action="store_true", help="JSON instead of a table")
    s.add_argument("--no-size", action="store_true", help="skip measuring disk use (walks every file)")
    s.set_defaults(func=lambda a, p: _say(status.listing(p, "data", json_out=a.json, sizes=not a.no_size)))
    s = data.add_parser("prepare", parents=[common], help="index, verify and split a dataset folder")
    s.add_argument("dataset")
    s.add_argument("--raw", required=True, help="the dataset folder")
    s.add_argument("--out", required=True, help="prepared folder to write")
    s.set_defaults(func=lambda a, p: _ok(steps.prepare(p, a.dataset, a.raw, a.out, progress=not a.quiet)))

    models = sub.add_parser("models", help="model steps").add_subparsers(dest="models_command", required=True)
    s = models.add_parser("list", parents=[common],
                          help="each model: where its weights come from, fetched or not, its preprocessing")
    s.add_argument("--json", action="store_true", help="JSON instead of a table")
    s.set_defaults(func=lambda a, p: _say(status.listing(p, "models", json_out=a.json)))
    s = models.add_parser("fetch", parents=[common], help="save a timm model's pretrained weights as a checkpoint")
    s.add_argument("model")
    s.add_argument("--out", default=None, help="checkpoint (default: models/<suite>/<model>/pretrained.pt)")
    s.add_argument("--weights", default=None, help="a local file of the weights instead of the download")
    s.set_defaults(func=lambda a, p: _ok(steps.fetch_weights(p, a.model, a.out, weights=a.weights)))

    s = sub.add_parser("pretrain", parents=[common, torch_opts, train_opts], help="pretrain a rib-mini model")
    s.add_argument("model")
    s.add_argument("--snapshots", default=None, help="folder for the intermediate epochs' snapshots (robustness.snapshots)")
    s.set_defaults(func=lambda a, p: _ok(steps.pretrain(p, a.model, snapshots=a.snapshots, **_train(a))))

    s = sub.add_parser("finetune", parents=[common, torch_opts, train_opts, cache_opts],
                       help="fine-tune a pretrained model on one dataset with one method")
    s.add_argument("model")
    s.add_argument("method")
    s.add_argument("dataset")
    s.add_argument("--pretrained", required=True, help="pretrained checkpoint")
    s.add_argument("--init", default=None, help="checkpoint training starts from (LP-FT: its linear probe; "
                                                "default: the pipeline's, when it exists)")
    s.add_argument("--reference", default=None, help="prepared pretraining-domain dataset (importance weights of EWC "
                                                     "and MAS; default: the pipeline's)")
    s.set_defaults(func=lambda a, p: _ok(steps.finetune(p, a.model, a.method, a.dataset, pretrained=a.pretrained, init=a.init,
                                                        reference=a.reference, params_file=a.params, **_train(a))))

    s = sub.add_parser("evaluate", parents=[common, torch_opts, cache_opts],
                       help="evaluate a checkpoint: one JSON per dataset")
    s.add_argument("checkpoint")
    s.add_argument("datasets", nargs="*",
                   help="prepared dataset folders (default: the source set and every dataset of grid.datasets)")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=lambda a, p: _ok(steps.evaluate(p, a.checkpoint, a.datasets, out_dir=a.out_dir, **_io(a))))

    s = sub.add_parser("evaluate-snapshots", parents=[common, torch_opts, cache_opts],
                       help="evaluate a model's pretraining snapshots on every dataset (effective robustness's baseline)")
    s.add_argument("snapshots", help="the snapshots' folder (models/<suite>/<model>/snapshots)")
    s.add_argument("--out", required=True, help="JSON file to write")
    s.set_defaults(func=lambda a, p: _ok(steps.evaluate_snapshots(p, a.snapshots, out=a.out, **_io(a))))

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
    s.set_defaults(func=lambda a, p: _ok(steps.combine(p, a.model, a.method, a.dataset, pretrained=a.pretrained,
                                                       ingredients=a.ingredients, data=a.data, datasets=a.datasets,
                                                       out_dir=a.out_dir, params_file=a.params, **_io(a))))

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
    s.set_defaults(func=lambda a, p: _ok(steps.distance(p, a.model, a.dataset, pretrained=a.pretrained,
                                                        reference_data=a.reference_data, data=a.data, out=a.out, **_io(a))))

    s = sub.add_parser("aggregate", parents=[common], help="cells -> long table, metrics and summary tables")
    s.add_argument("--root", default=".", help="folder holding results/ (default: .)")
    s.set_defaults(func=lambda a, p: _ok(steps.aggregate(p, a.root)))

    s = sub.add_parser("figures", parents=[common], help="the radar and bar charts from the tables")
    s.set_defaults(func=lambda a, p: _ok(steps.figures(p)))
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
    s.set_defaults(func=lambda a, p: _say(steps.cell(p, a.model, a.method, a.dataset, a.eval, params_file=a.params).render()))

    s = sub.add_parser("verify", parents=[common],
                       help="check the outputs of the working folder (digests, structure); move damaged ones aside")
    s.add_argument("--root", default=".", help="working folder (default: .)")
    s.add_argument("--all-suites", action="store_true", help="check every suite's outputs, not only params' suite")
    s.add_argument("--full", action="store_true", help="also check checkpoint and cache-shard digests (reads all)")
    s.add_argument("--repair", action="store_true", help="move damaged outputs aside (NAME.damaged) to be rebuilt")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("methods", parents=[common], help="list the methods, their settings and defaults")
    s.set_defaults(func=lambda a, p: _say(status.methods_text(p, a.params)))

    s = sub.add_parser("plan", parents=[common],
                       help="what a run of the params file costs: jobs per rule, images, disk, hours")
    s.add_argument("--throughput", action="append", default=[], metavar="FAMILY=TRAIN,EVAL",
                   help="training and evaluation images/s of a model family (e.g. vit_b16=400,2500), over the "
                        "measured ones; repeatable")
    s.add_argument("--throughputs", default=None, metavar="FILE",
                   help="measured throughputs (default: benchmarks/throughputs.yaml of this checkout)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=lambda a, p: _say(plan.report(p, a.params, a.throughput, a.throughputs, json_out=a.json)))

    s = sub.add_parser("dvc", parents=[common], help="write the DVC pipeline (dvc.yaml) of the params file")
    s.add_argument("--out", default=None, help="file to write (default: dvc.yaml, for params.yaml)")
    s.add_argument("--check", action="store_true", help="only check that the file is up to date")
    s.set_defaults(func=lambda a, p: _say(steps.write_dvc(p, a.params, a.out, check=a.check)))

    s = sub.add_parser("serve", parents=[common],
                       help="keep torch and timm imported and run rib commands in forks (RIB_SERVER=SOCKET); "
                            "`rib serve -- CMD ...` runs CMD (e.g. dvc repro) with a server for its rib commands")
    s.add_argument("--socket", default=None, help="Unix socket to listen on (required without a command)")
    s.add_argument("--idle-timeout", type=float, default=300.0, help="exit after this many idle seconds")
    s.add_argument("--parent", type=int, default=None, help="exit once this process is gone")
    s.add_argument("command", nargs=argparse.REMAINDER,
                   help="after --: a command to run with RIB_SERVER set; the server stops when it ends")
    s.set_defaults(func=lambda a, p: server.command(a.command, a.socket, a.idle_timeout, a.parent))
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except MemoryError:  # so little memory left that even the message could not be composed
        sys.stderr.write("rib: error: ran out of CPU memory: lower train.batch_size or evaluate.batch_size, or set "
                         "runtime.preload: false\n")
        return 2


def _main(argv: list[str] | None) -> int:
    from .progress import setup_logging
    from .provenance import log_slurm_job

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command != "serve":
        log_slurm_job()
    try:
        return args.func(args, load(args.params))
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
        advice = memory_advice(args.command, kind, err, method=getattr(args, "method", None),
                               model=getattr(args, "model", None))
        print(f"rib: error: {advice}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
