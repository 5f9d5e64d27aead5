"""The pipeline's job graph, written once: every kind of job, with its inputs, outputs, command and
params keys as functions of the configuration.

Everything that needs the graph derives it from here:

* the Snakemake rules take their inputs and their ``rib`` command from :meth:`Graph.job`
  (workflow/rules/*.smk; a rule keeps only its output pattern, log, resources and wildcard
  constraints);
* ``rib dvc`` renders :meth:`Graph.jobs` as dvc.yaml (:mod:`rib.dvc_pipeline`), one ``foreach``
  stage per job kind;
* ``rib cell`` walks it back from a cell to the checkpoints and data it is made from;
* verify's rebuild list is the outputs of the jobs that make checkpoints, caches, cells and distances.

A job's paths are *templates*: ``{name}`` stands for a value of its ``vars``, the values that differ
between the jobs of one DVC stage (its ``foreach`` item), and ``{key}`` for the item's key.
:meth:`Job.fill` gives the job's own paths; dvc.yaml spells the same templates as ``${item.name}``.
To add an input to a job kind, add it to the kind's function below: Snakemake, DVC and ``rib cell``
all see it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import grid
from .errors import RibError

# The rib source each kind of job runs (DVC reruns a stage when it changes; Snakemake reruns a job
# when its command, a param of its rule, changes).
TRAIN_CODE = ("src/rib/train.py", "src/rib/methods", "src/rib/models", "src/rib/data/loading.py",
              "src/rib/data/labels.py")
EVAL_CODE = ("src/rib/evaluate.py", "src/rib/data/loading.py", "src/rib/data/labels.py", "src/rib/models")

# Jobs whose outputs a run can write again when found damaged (rib.verify).
REBUILDABLE = ("cache", "pretrain", "fetch_weights", "finetune", "evaluate_pretrained", "evaluate_snapshots",
               "evaluate_finetuned", "combine", "distance")
# Every kind of job: a Snakemake rule each (generate_corpus and prepare_corpus: the corpora's).
KINDS = ("generate", "generate_corpus", "fetch", "prepare", "prepare_corpus", "cache", "pretrain", "fetch_weights",
         "finetune", "evaluate_pretrained", "evaluate_snapshots", "evaluate_finetuned", "combine", "distance",
         "aggregate", "figures", "usage")


@dataclass(frozen=True)
class Dep:
    """One named group of a job's inputs. ``name`` None: DVC tracks it but Snakemake needs no
    edge for it (rib's source files; a raw folder beside its prepared one). ``dvc``: what DVC tracks
    instead of ``paths`` (a folder for the many files the aggregate reads)."""

    name: str | None
    paths: tuple[str, ...]
    dvc: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Job:
    rule: str                        # the Snakemake rule
    stage: str | None                # the DVC stage (None: Snakemake only)
    key: str | None                  # its foreach key (None: a plain stage)
    vars: dict[str, str]             # its foreach item
    cmd: str                         # the rib subcommand and its arguments (a template)
    deps: tuple[Dep, ...]            # inputs, in dvc.yaml's order
    outs: tuple[str, ...]            # outputs as DVC tracks them (templates)
    files: tuple[str, ...] = ()      # the output files, where they differ from outs (a cell folder's cells)
    params: tuple[str, ...] = ()     # the params keys the job reads (dvc.yaml's params)
    persist: bool = False            # DVC keeps the outputs when it reruns the stage (downloads)
    dvc_extra: dict = field(default_factory=dict)  # metrics and plots of the report stages
    model: str | None = None         # the grid's names, for Snakemake's wildcards and rib plan
    method: str | None = None
    dataset: str | None = None
    prep: str | None = None

    def fill(self, template: str) -> str:
        return template.format(**self.vars, key=self.key)

    def template(self, template: str) -> str:
        """The template as dvc.yaml writes it."""
        return template.format(**{k: f"${{item.{k}}}" for k in self.vars}, key="${key}")

    @property
    def command(self) -> str:
        return self.fill(self.cmd)

    @property
    def outputs(self) -> list[str]:
        return [self.fill(t) for t in (self.files or self.outs)]

    def inputs(self) -> dict[str, list[str]]:
        """Snakemake's named inputs."""
        return {d.name: [self.fill(p) for p in d.paths] for d in self.deps if d.name}

    @property
    def dvc_name(self) -> str | None:
        return None if self.stage is None else (self.stage if self.key is None else f"{self.stage}@{self.key}")


class Graph:
    """The jobs of one configuration. ``job(rule, **wildcards)`` builds any job a rule can run
    (also one outside the grid, such as a cell asked for by name); ``jobs()`` lists the grid's."""

    def __init__(self, params: dict):
        from .data.suites import get_suite
        from .models.registry import model_slug

        self.params = params
        self.suite = get_suite(params)
        self.name = self.suite.name
        self.evals = grid.eval_datasets(params)
        self.cached = bool(params["runtime"].get("cache", True))
        self._names = {model_slug(m): m for m in params["grid"]["models"]}
        self._memo: dict = {}
        self._folders: dict[tuple[str, str], str] = {}
        self._preps: dict[str, str] = {}
        self._writers: dict[str, Job] | None = None

    # -- naming ------------------------------------------------------------------------------
    def _pat(self, kind: str, **fields) -> str:
        return grid.PATTERNS[kind].format(suite=self.name, **fields)

    def _prepared(self, dataset: str, stage: str = "prepared") -> str:
        if (dataset, stage) not in self._folders:
            self._folders[dataset, stage] = grid.data_dir(self.params, dataset, stage)
        return self._folders[dataset, stage]

    def _cache_dir(self, prep: str, dataset: str) -> str:
        return self._pat("cache", prep=prep, dataset=dataset)

    def _caches(self, *datasets: str, ft: str | None = None) -> tuple[str, ...]:
        """Cache folders of a job's model (its ``{prep}``) for these datasets (``{dataset}``: its
        fine-tuning dataset ``ft``): evaluation datasets only (corpora are read once and not
        cached); none when runtime.cache is off."""
        if not self.cached:
            return ()
        return tuple(self._cache_dir("{prep}", d) for d in datasets if (ft if d == "{dataset}" else d) in self.evals)

    def _cache_opt(self, *datasets: str, ft: str | None = None) -> str:
        caches = self._caches(*datasets, ft=ft)
        return f" --cache {' '.join(caches)}" if caches else ""

    def _with_prep(self, item: dict, model: str) -> dict:
        if self.cached and model not in self._preps:
            self._preps[model] = grid.prep_key(self.params, model)
        return {**item, "prep": self._preps[model]} if self.cached else item

    def generated(self, dataset: str) -> bool:
        """A synthetic suite's own dataset (rib data generate), not one fetched (a plugin's folder)."""
        return self.suite.synthetic and self.suite.dataset(dataset).source is None

    def model(self, name: str) -> str:
        """The grid's name of a model given by name or by its slug (a Snakemake wildcard)."""
        return self._names.get(name, name)

    # -- the kinds of job --------------------------------------------------------------------------
    def job(self, rule: str, **wildcards: str) -> Job:
        if rule not in KINDS:
            raise RibError(f"no job kind {rule!r} (one of {', '.join(KINDS)})")
        if "model" in wildcards:  # a Snakemake wildcard holds the model's slug
            wildcards["model"] = self.model(wildcards["model"])
        key = (rule, tuple(sorted(wildcards.items())))
        if key not in self._memo:
            self._memo[key] = getattr(self, f"_{rule}")(**wildcards)
        return self._memo[key]

    def _data(self, rule: str, stage: str, dataset: str, cmd: str, deps: tuple[Dep, ...], outs: tuple[str, ...],
              params: tuple[str, ...] = (), persist: bool = False) -> Job:
        vars = {"raw": self._prepared(dataset, "raw"), "prepared": self._prepared(dataset)}
        corpus = self.suite.dataset(dataset).role == "corpus"
        return Job(rule + ("_corpus" if corpus and rule != "fetch" else ""), stage + ("-corpus" if corpus else ""),
                   dataset, vars, cmd, deps, outs, params=params, persist=persist, dataset=dataset)

    def _generate(self, dataset: str) -> Job:
        return self._data("generate", "generate", dataset, "data generate {key} --out {raw}",
                          (Dep(None, ("src/rib/data/synthetic",)),), ("{raw}",), ("seed", "synthetic"))

    _generate_corpus = _generate

    def _fetch(self, dataset: str) -> Job:
        return self._data("fetch", "fetch", dataset, "data fetch {key}", (Dep(None, ("src/rib/data/imagenet_rib.py",)),),
                          ("{raw}",), persist=True)

    def _prepare(self, dataset: str) -> Job:
        keys = ("split", "data.skip_corrupt_images", "data.corruption_subset",
                *(("data.classes",) if "classes" in self.params["data"] else ()))
        return self._data("prepare", "prepare", dataset, "data prepare {key} --raw {raw} --out {prepared}",
                          (Dep(None, ("src/rib/data/manifest.py", "src/rib/data/layouts.py")), Dep("raw", ("{raw}",))),
                          ("{prepared}",), keys)

    _prepare_corpus = _prepare

    def _cache(self, prep: str, dataset: str) -> Job:
        """Each evaluation dataset decoded, resized and cropped once per preprocessing."""
        vars = {"prep": prep, "dataset": dataset, "data": self._prepared(dataset)}
        out = self._cache_dir("{prep}", "{dataset}")
        return Job("cache", "cache", f"{prep}-{dataset}", vars,
                   f"cache build {{dataset}} --data {{data}} --prep {{prep}} --out {out}",
                   (Dep(None, ("src/rib/data/cache.py", "src/rib/data/loading.py")), Dep("data", ("{data}",))),
                   (out,), dataset=dataset, prep=prep)

    def _pretrain(self, model: str) -> Job:
        from .models.registry import get_model, model_slug

        corpus = get_model(model, self.params).pretrain_corpus
        if corpus is None:
            raise RibError(f"model {model!r} is not pretrained by the pipeline")
        slug = model_slug(model)
        vars = {"pretrained": self._pat("pretrained", model=slug), "corpus": self._prepared(corpus),
                "corpus_raw": self._prepared(corpus, "raw")}
        snapshots = model in grid.snapshot_models(self.params)
        if snapshots:
            vars["snapshots"] = self._pat("snapshots", model=slug)
        return Job("pretrain", "pretrain", slug, vars,
                   "pretrain {key} --data {corpus} --out {pretrained}" + (" --snapshots {snapshots}" if snapshots else ""),
                   (Dep(None, ("src/rib/train.py", "src/rib/methods", "src/rib/models", "src/rib/data/loading.py",
                               "{corpus_raw}")), Dep("data", ("{corpus}",))),
                   ("{pretrained}", *(("{snapshots}",) if snapshots else ())),
                   params=("seed", "pretrain", "train.precision", "synthetic.image_size", "synthetic.num_classes",
                           *self._robustness_keys("snapshots")),
                   model=model)

    def _robustness_keys(self, *keys: str) -> tuple[str, ...]:
        """The params keys of robustness that the params file sets (DVC refuses a key it lacks)."""
        given = self.params.get("robustness") or {}
        return tuple(f"robustness.{k}" for k in keys if k in given)

    def _evaluate_snapshots(self, model: str) -> Job:
        """The pretraining snapshots of a model evaluated on every evaluation dataset: baseline
        points of effective robustness."""
        from .models.registry import model_slug

        slug = model_slug(model)
        vars = self._with_prep({"snapshots": self._pat("snapshots", model=slug),
                                "out": self._pat("snapshot_cells", model=slug)}, model)
        return Job("evaluate_snapshots", "evaluate-snapshots", slug, vars,
                   f"evaluate-snapshots {{snapshots}}{self._cache_opt(*self.evals)} --out {{out}}",
                   (Dep("snapshots", ("{snapshots}",)), *self._eval_deps(), Dep("cache", self._caches(*self.evals))),
                   ("{out}",), params=self._EVAL_PARAMS, model=model, method="snapshots", prep=vars.get("prep"))

    def _fetch_weights(self, model: str) -> Job:
        from .models.registry import model_slug

        slug = model_slug(model)
        return Job("fetch_weights", "fetch-weights", slug, {"pretrained": self._pat("pretrained", model=slug)},
                   "models fetch {key} --out {pretrained}", (Dep(None, ("src/rib/models/network.py",)),),
                   ("{pretrained}",), model=model)

    def _checkpoint(self, entry: str) -> str:
        return self._pat("finetuned", model="{model}", method=entry, dataset="{dataset}")

    def _pair(self, model: str, dataset: str) -> dict:
        from .models.registry import model_slug

        if self.suite.dataset(dataset).role == "corpus":
            raise RibError(f"{dataset!r} is a pretraining corpus of suite {self.name!r}, not a dataset to fine-tune on")
        return self._with_prep({"model": model_slug(model), "dataset": dataset}, model)

    def _finetune(self, model: str, method: str, dataset: str) -> Job:
        """Fine-tuning with one training method: from the pretrained model, or from another entry's
        checkpoint (LP-FT: its linear probe); EWC and MAS also read pretraining-domain images."""
        from .methods import entry_info, init_entry

        entry = method
        vars = self._pair(model, dataset)
        ref = grid.reference_dataset(self.params, model, entry)
        if ref:
            vars["reference"] = self._prepared(ref)
        start = init_entry(self.params, entry)
        pretrained = self._pat("pretrained", model="{model}")
        data = self._pat("prepared", dataset="{dataset}")
        out = self._checkpoint(entry)
        init = self._checkpoint(start) if start else None
        options = (f" --init {init}" if init else "") + (" --reference {reference}" if ref else "")
        deps = [Dep(None, TRAIN_CODE), Dep("pretrained", (pretrained,)),
                Dep(None, (self._pat("raw", dataset="{dataset}"),)), Dep("data", (data,)),
                Dep("cache", self._caches("{dataset}", ft=dataset))]
        deps += [Dep("init", (init,))] if init else []
        deps += [Dep("reference", ("{reference}",))] if entry_info(self.params, entry).needs_reference else []
        return Job("finetune", f"finetune-{entry}", f"{vars['model']}-{dataset}", vars,
                   f"finetune {{model}} {entry} {{dataset}} --pretrained {pretrained} --data {data}{options}"
                   f"{self._cache_opt('{dataset}', ft=dataset)} --out {out}",
                   tuple(deps), (out,), params=("seed", "train", f"methods.{entry}"),
                   model=model, method=entry, dataset=dataset, prep=vars.get("prep"))

    def _eval_deps(self) -> tuple[Dep, ...]:
        return (Dep(None, EVAL_CODE), Dep(None, tuple(self._prepared(d, "raw") for d in self.evals)),
                Dep("data", tuple(self._prepared(d) for d in self.evals)))

    def _cells(self, out_dir: str) -> tuple[str, ...]:
        return tuple(f"{out_dir}/{d}.json" for d in self.evals)

    _EVAL_PARAMS = ("grid.source", "grid.datasets", "evaluate.scoring")

    def _evaluate_pretrained(self, model: str) -> Job:
        from .models.registry import model_slug

        slug = model_slug(model)
        vars = self._with_prep({"checkpoint": self._pat("pretrained", model=slug),
                                "out": os.path.dirname(self._pat("pretrained_cell", model=slug, eval="x"))}, model)
        return Job("evaluate_pretrained", "evaluate-pretrained", slug, vars,
                   f"evaluate {{checkpoint}}{self._cache_opt(*self.evals)} --out-dir {{out}}",
                   (Dep("checkpoint", ("{checkpoint}",)), *self._eval_deps(), Dep("cache", self._caches(*self.evals))),
                   ("{out}",), files=self._cells("{out}"), params=self._EVAL_PARAMS, model=model,
                   method=grid.PRETRAINED, prep=vars.get("prep"))

    def _cell_dir(self, method: str) -> str:
        return os.path.dirname(self._pat("finetuned_cell", model="{model}", method=method, dataset="{dataset}",
                                         eval="x"))

    def _evaluate_finetuned(self, model: str, method: str, dataset: str) -> Job:
        from .models.registry import model_slug

        vars = self._with_prep({"model": model_slug(model), "method": method, "dataset": dataset}, model)
        checkpoint = self._checkpoint("{method}")
        out = self._cell_dir("{method}")
        return Job("evaluate_finetuned", "evaluate-finetuned", f"{vars['model']}-{method}-{dataset}", vars,
                   f"evaluate {checkpoint}{self._cache_opt(*self.evals)} --out-dir {out}",
                   (Dep("checkpoint", (checkpoint,)), *self._eval_deps(), Dep("cache", self._caches(*self.evals))),
                   (out,), files=self._cells(out), params=self._EVAL_PARAMS, model=model, method=method,
                   dataset=dataset, prep=vars.get("prep"))

    def _combine(self, model: str, method: str, dataset: str) -> Job:
        """A weight-space method: combines finished checkpoints of the same model and dataset."""
        from .methods import trained_ingredients

        entry = method
        names = trained_ingredients(self.params, entry)
        vars = self._pair(model, dataset)
        pretrained = self._pat("pretrained", model="{model}")
        parts = tuple(self._checkpoint(n) for n in names)
        data = self._pat("prepared", dataset="{dataset}")
        out = self._cell_dir(entry)
        return Job("combine", f"combine-{entry}", f"{vars['model']}-{dataset}", vars,
                   f"combine {{model}} {entry} {{dataset}} --pretrained {pretrained} --ingredients {' '.join(parts)} "
                   f"--data {data}{self._cache_opt(*self.evals)} --out-dir {out}",
                   (Dep(None, ("src/rib/methods/weights.py",)), Dep("pretrained", (pretrained,)),
                    Dep("ingredients", parts), *self._eval_deps(), Dep("cache", self._caches(*self.evals))),
                   (out,), files=self._cells(out),
                   params=(f"methods.{entry}", *(f"methods.{n}" for n in names), "evaluate.scoring"),
                   model=model, method=entry, dataset=dataset, prep=vars.get("prep"))

    def _distance(self, model: str, dataset: str) -> Job:
        """OTDD between the pretraining-domain data and one fine-tuning dataset."""
        vars = self._pair(model, dataset)
        ref = grid.distance_reference(self.params)
        pretrained = self._pat("pretrained", model="{model}")
        data = self._pat("prepared", dataset="{dataset}")
        out = self._pat("distance", model="{model}", dataset="{dataset}")
        return Job("distance", "distance", f"{vars['model']}-{dataset}", vars,
                   f"distance {{model}} {{dataset}} --pretrained {pretrained} --reference-data {self._prepared(ref)} "
                   f"--data {data}{self._cache_opt(ref, '{dataset}', ft=dataset)} --out {out}",
                   (Dep(None, ("src/rib/distance.py",)), Dep("pretrained", (pretrained,)),
                    Dep(None, (self._prepared(ref, "raw"),)), Dep("reference", (self._prepared(ref),)),
                    Dep(None, (self._pat("raw", dataset="{dataset}"),)), Dep("data", (data,)),
                    Dep("cache", self._caches(ref, "{dataset}", ft=dataset))),
                   (out,), params=("seed", "distance"), model=model, dataset=dataset, prep=vars.get("prep"))

    def _aggregate(self) -> Job:
        reports = {k: grid.path(k, suite=self.name) for k in grid.TABLES}
        cells = tuple(cell.path(self.name) for cell in grid.cells(self.params))
        distances = tuple(grid.path("distance", suite=self.name, model=m, dataset=d)
                          for m, d in grid.distance_jobs(self.params))
        from .config import robustness_settings

        snapshots = tuple(grid.path("snapshot_cells", suite=self.name, model=m) for m in grid.snapshot_models(self.params))
        reference = robustness_settings(self.params)["reference"]
        focus = self.params["report"]["focus_method"]
        return Job("aggregate", "aggregate", None, {}, "aggregate",
                   (Dep(None, ("src/rib/aggregate.py", "src/rib/metrics.py", "src/rib/robustness.py")),
                    Dep("cells", cells, dvc=(f"results/{self.name}",)),
                    Dep("distances", distances, dvc=(f"distances/{self.name}",)),
                    *((Dep("snapshots", snapshots, dvc=()),) if snapshots else ()),
                    *((Dep("reference", (reference,)),) if reference else ())),
                   tuple(p for k, p in reports.items() if k not in ("metrics_json", "sweeps", "distances")),
                   files=tuple(reports.values()), params=("grid", *self._robustness_keys("scale", "reference")),
                   dvc_extra={"metrics": [reports["metrics_json"]],
                              "plots": [{reports["sweeps"]: {"x": "finetune", "y": "ood", "title":
                                                              "WiSE-FT: OOD vs fine-tuning-dataset accuracy (%)"}},
                                        {reports["distances"]: {"x": "otdd", "y": f"source_drop_{focus}", "title":
                                                                 "OTDD vs pretraining-domain accuracy lost (points)"}}]})

    def _figures(self) -> Job:
        figures = grid.figure_paths(self.name)
        tables = tuple(grid.path(k, suite=self.name) for k in grid.FIGURE_TABLES)
        return Job("figures", "figures", None, {}, "figures", (Dep(None, ("src/rib/figures.py",)), Dep("tables", tables)),
                   tuple(f for f in figures if f.endswith(".pdf")), files=tuple(figures), params=("report",),
                   dvc_extra={"plots": [f for f in figures if f.endswith(".png")]})

    def _usage(self) -> Job:
        """Time and memory of every job, per rule (Snakemake's benchmark files; no DVC stage)."""
        made = self._aggregate().outputs + self._figures().outputs
        out = tuple(f"reports/{self.name}/{n}" for n in ("usage.csv", "usage_by_rule.csv", "usage_by_rule.md"))
        return Job("usage", None, None, {}, "usage", (Dep("reports", tuple(made)),), out)

    # -- the grid's jobs ------------------------------------------------------------------------
    def jobs(self) -> Iterator[Job]:
        """Every job of the grid, in dvc.yaml's order."""
        from .models.registry import get_model

        params, g = self.params, self.params["grid"]
        needed = grid.datasets_to_prepare(params)
        for corpus in (False, True):
            names = [d for d in needed if (self.suite.dataset(d).role == "corpus") == corpus]
            yield from (self.job("generate" if self.generated(d) else "fetch", dataset=d) for d in names)
            yield from (self.job("prepare", dataset=d) for d in names)
        for prep, d in grid.cache_jobs(params):
            yield self.job("cache", prep=prep, dataset=d)
        for m in g["models"]:  # pretrained by the pipeline (rib-mini's), else fetched (a plugin's too)
            yield self.job("pretrain" if get_model(m, params).pretrain_corpus else "fetch_weights", model=m)
        pairs = [(m, d) for m in g["models"] for d in grid.finetune_datasets(params)]
        for entry in grid.train_entries(params):
            yield from (self.job("finetune", model=m, method=entry, dataset=d) for m, d in pairs)
        yield from (self.job("evaluate_pretrained", model=m) for m in g["models"])
        yield from (self.job("evaluate_snapshots", model=m) for m in grid.snapshot_models(params))
        trained = [e for e in g["methods"] if grid.method_kind(params, e) == "train"]
        for m in g["models"]:
            yield from (self.job("evaluate_finetuned", model=m, method=e, dataset=d)
                        for e in trained for d in grid.finetune_datasets(params))
        for entry in grid.weight_entries(params):
            yield from (self.job("combine", model=m, method=entry, dataset=d) for m, d in pairs)
        yield from (self.job("distance", model=m, dataset=d) for m, d in pairs)
        yield from (self.job(rule) for rule in ("aggregate", "figures", "usage"))

    def writer(self, path: str) -> Job | None:
        """The grid's job that writes ``path``."""
        if self._writers is None:
            self._writers = {out: job for job in self.jobs() for out in job.outputs}
        return self._writers.get(os.path.normpath(path))

    def upstream(self, job: Job) -> list[Job]:
        """The jobs whose outputs ``job`` reads, nearest first (each once)."""
        seen: list[Job] = []

        def visit(j: Job) -> None:
            for paths in j.inputs().values():
                for p in paths:
                    w = self.writer(p)
                    if w is not None and w not in seen:
                        seen.append(w)
                        visit(w)

        visit(job)
        return seen

    def rebuildable_outputs(self) -> set[str]:
        """The files and folders a pipeline run can write again: cells, distances, fine-tuned and
        pretrained checkpoints, image caches."""
        return {out for job in self.jobs() if job.rule in REBUILDABLE for out in job.outputs}
