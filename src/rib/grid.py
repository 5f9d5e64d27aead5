"""The benchmark grid and where each of its artefacts lives.

The path patterns here are the single definition of the pipeline's file layout: the Snakefile uses
them as its rules' output patterns, and the job graph (:mod:`rib.jobs`) builds every job's inputs,
outputs and command from them, for Snakemake, dvc.yaml and ``rib`` alike. A *cell* is (suite, model, method, D_ft, eval dataset);
the pretrained model's cells use method ``pretrained`` and no D_ft, and are shared by all methods.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

PRETRAINED = "pretrained"

PATTERNS = {
    # Evaluation datasets (source and D) and pretraining corpora live apart, so that a step that
    # reads every evaluation dataset can depend on one folder without the much larger corpora.
    "raw": "data/{suite}/raw/{dataset}",
    "prepared": "data/{suite}/prepared/{dataset}",
    "corpus_raw": "data/{suite}/corpora/raw/{dataset}",
    "corpus_prepared": "data/{suite}/corpora/prepared/{dataset}",
    "pretrained": "models/{suite}/{model}/pretrained.pt",
    # intermediate pretraining epochs (robustness.snapshots), baseline points of effective robustness
    "snapshots": "models/{suite}/{model}/snapshots",
    "snapshot_cells": "results/{suite}/{model}/snapshots.json",
    "finetuned": "checkpoints/{suite}/{model}/{method}/{dataset}/model.pt",
    "pretrained_cell": "results/{suite}/{model}/pretrained/{eval}.json",
    "finetuned_cell": "results/{suite}/{model}/{method}/{dataset}/{eval}.json",
    "distance": "distances/{suite}/{model}/{dataset}.json",
    "cache": "cache/{suite}/{prep}/{dataset}",
    "cells": "reports/{suite}/cells.csv",
    "metrics": "reports/{suite}/metrics.csv",
    "summary": "reports/{suite}/summary.csv",
    "summary_md": "reports/{suite}/summary.md",
    "methods_summary": "reports/{suite}/summary_by_method.csv",
    "sweeps": "reports/{suite}/sweeps.csv",
    "ri_matrix": "reports/{suite}/ri_matrix.csv",
    "corruptions": "reports/{suite}/imagenet_c.csv",
    "distances": "reports/{suite}/distances.csv",
    "summary_tex": "reports/{suite}/summary.tex",
    "metrics_json": "reports/{suite}/metrics.json",
    "robustness": "reports/{suite}/effective_robustness.csv",
    "robustness_cells": "reports/{suite}/effective_robustness_cells.csv",
    "robustness_md": "reports/{suite}/effective_robustness.md",
    "robustness_tex": "reports/{suite}/effective_robustness.tex",
    "baseline": "reports/{suite}/baseline.csv",
    "baseline_lines": "reports/{suite}/baseline_lines.csv",
    "figure": "reports/{suite}/figures/{figure}.{ext}",
}


# What `rib aggregate` writes and `rib figures` draws (Snakemake's and DVC's outputs alike).
TABLES = ("cells", "metrics", "summary", "summary_md", "summary_tex", "methods_summary", "sweeps", "ri_matrix",
          "corruptions", "distances", "metrics_json", "robustness", "robustness_cells", "robustness_md",
          "robustness_tex", "baseline", "baseline_lines")


# The tables `rib figures` draws from (what the figures job reads).
FIGURE_TABLES = ("metrics", "summary", "sweeps", "distances", "ri_matrix", "robustness_cells", "baseline",
                 "baseline_lines")
FIGURES = ("radar", "bar", "ri_heatmap", "ood_scatter", "wise_curve", "otdd_scatter", "effective_robustness")
FIGURE_FORMATS = ("png", "pdf")


def figure_paths(suite: str) -> list[str]:
    return [PATTERNS["figure"].format(suite=suite, figure=f, ext=e) for f in FIGURES for e in FIGURE_FORMATS]


def path(kind: str, **fields) -> str:
    if "model" in fields:  # model names may hold ':' and '/' (timm:..., open_clip:...)
        from .models.registry import model_slug

        fields["model"] = model_slug(fields["model"])
    return PATTERNS[kind].format(**fields)


def data_dir(params: dict, dataset: str, stage: str = "prepared") -> str:
    """Folder of a dataset at ``stage`` (raw | prepared): corpora under data/<suite>/corpora/."""
    from .data.suites import get_suite

    corpus = get_suite(params).dataset(dataset).role == "corpus"
    return path(f"corpus_{stage}" if corpus else stage, suite=params["suite"], dataset=dataset)


@dataclass(frozen=True)
class Cell:
    model: str
    method: str
    finetune_dataset: str | None
    eval_dataset: str

    def path(self, suite: str) -> str:
        if self.method == PRETRAINED:
            return path("pretrained_cell", suite=suite, model=self.model, eval=self.eval_dataset)
        return path("finetuned_cell", suite=suite, model=self.model, method=self.method,
                    dataset=self.finetune_dataset, eval=self.eval_dataset)


def eval_datasets(params: dict) -> list[str]:
    """Every checkpoint is evaluated on the source domain and on every dataset of D."""
    return [params["grid"]["source"], *params["grid"]["datasets"]]


def finetune_datasets(params: dict) -> list[str]:
    """The datasets of D that models are fine-tuned on: grid.finetune_on, else every one (the paper)."""
    chosen = params["grid"].get("finetune_on")
    return [d for d in params["grid"]["datasets"] if d in chosen] if chosen else list(params["grid"]["datasets"])


def method_kind(params: dict, entry: str) -> str:
    from .methods import entry_info

    return entry_info(params, entry).kind


def train_entries(params: dict) -> list[str]:
    """Every methods entry the grid trains: the grid's training methods, the checkpoints its
    weight-space methods combine, and the checkpoints training starts from (LP-FT's probe)."""
    from .methods import init_entry, trained_ingredients

    out: list[str] = []

    def add(entry: str) -> None:
        if entry in out:
            return
        start = init_entry(params, entry)
        if start is not None:
            add(start)
        out.append(entry)

    for entry in params["grid"]["methods"]:
        if method_kind(params, entry) == "train":
            add(entry)
        else:
            for name in trained_ingredients(params, entry):
                add(name)
    return out


def weight_entries(params: dict) -> list[str]:
    return [m for m in params["grid"]["methods"] if method_kind(params, m) == "weights"]


def finetune_jobs(params: dict) -> Iterator[tuple[str, str, str]]:
    entries = train_entries(params)
    for model in params["grid"]["models"]:
        for method in entries:
            for dataset in finetune_datasets(params):
                yield model, method, dataset


def reference_dataset(params: dict, model: str, entry: str) -> str | None:
    """The pretraining-domain dataset of a method that needs one (EWC, MAS): its ``reference``
    setting, else the model's pretraining corpus when the pipeline pretrains it, else grid.source."""
    from .methods import entry_config, entry_info
    from .models.registry import get_model

    if not entry_info(params, entry).needs_reference:
        return None
    chosen = entry_config(params, entry).get("reference")
    return chosen or get_model(model, params).pretrain_corpus or params["grid"]["source"]


def cells(params: dict) -> Iterator[Cell]:
    evals = eval_datasets(params)
    for model in params["grid"]["models"]:
        for ev in evals:
            yield Cell(model, PRETRAINED, None, ev)
    g = params["grid"]
    for model in g["models"]:
        for method in g["methods"]:
            for dataset in finetune_datasets(params):
                for ev in evals:
                    yield Cell(model, method, dataset, ev)


def snapshot_models(params: dict) -> list[str]:
    """The grid's models whose pretraining keeps snapshots (robustness.snapshots above 0; the
    pipeline pretrains them). A run with too few epochs for any keeps an empty folder of them."""
    from .config import robustness_settings
    from .models.registry import get_model

    if not robustness_settings(params)["snapshots"]:
        return []
    return [m for m in params["grid"]["models"] if get_model(m, params).pretrain_corpus]


def distance_reference(params: dict) -> str:
    """The pretraining-domain dataset the fine-tuning datasets are measured against."""
    return params["distance"]["reference"] or params["grid"]["source"]


def distance_jobs(params: dict) -> Iterator[tuple[str, str]]:
    for model in params["grid"]["models"]:
        for dataset in finetune_datasets(params):
            yield model, dataset


def datasets_to_prepare(params: dict) -> list[str]:
    """The source set, D, and (for pipeline-pretrained models) their corpora."""
    from .models.registry import get_model

    names = eval_datasets(params)
    if distance_reference(params) not in names:
        names.append(distance_reference(params))
    for model in params["grid"]["models"]:
        corpus = get_model(model, params).pretrain_corpus
        if corpus and corpus not in names:
            names.append(corpus)
        for entry in train_entries(params):
            ref = reference_dataset(params, model, entry)
            if ref and ref not in names:
                names.append(ref)
    return names


def prep_key(params: dict, model: str) -> str:
    """The preprocessing key of a model's image caches (rib.data.cache.prep_key)."""
    from .models.registry import get_model, preprocessing_of
    from .models.registry import prep_key as key

    return key(preprocessing_of(get_model(model, params)))


def cache_jobs(params: dict) -> list[tuple[str, str]]:
    """Every (preprocessing key, dataset) cache the grid reads: each is built once, for all models."""
    if not params["runtime"].get("cache", True):
        return []
    return sorted({(prep_key(params, m), d) for m in params["grid"]["models"] for d in eval_datasets(params)})


def listing(params: dict, what: str = "cells") -> list[str]:
    """``rib grid``: the grid's cells, its fine-tuned checkpoints ("finetune") or its prepared
    dataset folders ("datasets")."""
    if what == "cells":
        return [cell.path(params["suite"]) for cell in cells(params)]
    if what == "finetune":
        return [path("finetuned", suite=params["suite"], model=m, method=e, dataset=d) for m, e, d in finetune_jobs(params)]
    return [data_dir(params, name) for name in datasets_to_prepare(params)]
