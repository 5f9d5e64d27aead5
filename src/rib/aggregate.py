"""From per-cell JSON files to the benchmark's tables.

* ``cells.csv``: the long-format table, one row per cell of the grid (pretrained cells included).
* ``metrics.csv``: one row per fine-tuned cell with A_pre, A_ft and RI, and the cell's role
  (``source``: the pretraining domain, ``finetune``: the held-out part of D_ft, ``ood``: D minus D_ft).
* ``summary.csv`` / ``summary.md``: one row per (model, method, D_ft): source-domain accuracy
  before/after, D_ft accuracy before/after, average OOD accuracy before/after, and mRI.
* ``summary_by_method.csv``: the same averaged over D_ft, one row per (model, method).
* ``sweeps.csv``: weight-space methods evaluated at several settings (WiSE-FT's mixing weights):
  one row per (model, method, D_ft, alpha) with source, D_ft and average OOD accuracy.
* ``ri_matrix.csv``: RI of every (D_ft, evaluation dataset) pair, one row per (model, method, D_ft).
* ``imagenet_c.csv``: accuracy per ImageNet-C corruption (mean over severities), one row per
  checkpoint (the pretrained model's included).
* ``distances.csv``: OTDD between the pretraining-domain data and each D_ft, with the accuracy
  each method lost on the pretraining domain.
* ``summary.tex``: the per-method and per-D_ft tables in LaTeX (booktabs); ``metrics.json``: the
  per-method summary for ``dvc metrics show``.
* ``effective_robustness.csv`` (per model, method, D_ft), ``effective_robustness_cells.csv`` (per
  evaluation dataset), ``.md`` and ``.tex``: effective robustness before and after fine-tuning;
  ``baseline.csv`` and ``baseline_lines.csv``: the baseline points and the lines fit on them
  (:mod:`rib.robustness`).

Tables give accuracies in percent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import grid, metrics
from .io import atomic_path, read_record, write_json

SUMMARY_COLUMNS = ["source_pre", "source_ft", "finetune_pre", "finetune_ft", "ood_pre", "ood_ft", "mri"]


def collect(params: dict, root: str | os.PathLike = ".") -> pd.DataFrame:
    """Read every cell of the grid; a missing or malformed cell file is an error naming it."""
    root = Path(root)
    suite = params["suite"]
    source = params["grid"]["source"]
    rows, sweeps, corruptions = [], [], []
    for cell in grid.cells(params):
        path = root / cell.path(suite)
        rec = read_record(path)
        per_corruption = rec.get("subsets", {}).get(rec.get("subset"), {}).get("per_corruption")
        if per_corruption:
            corruptions.append({"model": cell.model, "method": cell.method,
                                "finetune_dataset": cell.finetune_dataset or "", "subset": rec["subset"],
                                **{k: 100 * v for k, v in per_corruption.items()}, "mean": 100 * rec["top1"]})
        for point in rec.get("sweep", []):
            sweeps.append({"model": cell.model, "method": cell.method, "finetune_dataset": cell.finetune_dataset,
                           "alpha": point.get("alpha"), "eval_dataset": cell.eval_dataset,
                           "role": "source" if cell.eval_dataset == source else (
                               "finetune" if cell.eval_dataset == cell.finetune_dataset else "ood"),
                           "top1": point["top1"]})
        for key in ("top1", "subset", "n", "subsets"):
            if key not in rec:
                raise ValueError(f"{path}: cell record has no {key!r}")
        held = rec["subsets"].get("heldout", {})
        rows.append({
            "suite": suite, "model": cell.model, "method": cell.method,
            "finetune_dataset": cell.finetune_dataset or "", "eval_dataset": cell.eval_dataset,
            "role": "source" if cell.eval_dataset == source else (
                "finetune" if cell.eval_dataset == cell.finetune_dataset else "ood"),
            "subset": rec["subset"], "n": rec["n"], "top1": rec["top1"],
            "heldout_top1": held.get("top1", float("nan")), "scoring": rec.get("scoring", ""),
            "file": cell.path(suite),
        })
    frame = pd.DataFrame(rows)
    frame.attrs["sweeps"] = pd.DataFrame(sweeps)
    frame.attrs["corruptions"] = pd.DataFrame(corruptions)
    return frame


def ri_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """RI (points) per (model, method, D_ft) x evaluation dataset; D_ft's own column is its held-out part."""
    wide = table.pivot_table(index=["model", "method", "finetune_dataset"], columns="eval_dataset", values="ri",
                             sort=False)
    order = list(dict.fromkeys(table.eval_dataset))
    return wide[order].reset_index()


def distance_table(params: dict, summary: pd.DataFrame, root: str | os.PathLike = ".") -> pd.DataFrame:
    """OTDD per (model, D_ft) next to each method's loss of pretraining-domain accuracy."""
    rows = []
    for model, dataset in grid.distance_jobs(params):
        rec = read_record(Path(root) / grid.path("distance", suite=params["suite"], model=model, dataset=dataset))
        rows.append({"model": model, "finetune_dataset": dataset, "reference": rec["reference"],
                     "otdd": rec["otdd"], "n_reference": rec["n"][0], "n_finetune": rec["n"][1]})
    frame = pd.DataFrame(rows)
    drops = summary.assign(source_drop=summary.source_pre - summary.source_ft).pivot_table(
        index=["model", "finetune_dataset"], columns="method", values="source_drop", sort=False)
    drops.columns = [f"source_drop_{m}" for m in drops.columns]
    return frame.merge(drops.reset_index(), on=["model", "finetune_dataset"], how="left")


def to_latex(df: pd.DataFrame, caption: str, label: str, digits: int = 2) -> str:
    """A booktabs LaTeX table (pandas' Styler)."""
    styler = df.style.hide(axis="index").format(precision=digits, na_rep="--")
    return styler.to_latex(hrules=True, caption=caption, label=label, position="htbp",
                           column_format="l" * (df.shape[1] - df.select_dtypes("number").shape[1])
                           + "r" * df.select_dtypes("number").shape[1]).replace("_", r"\_") + "\n"


def metrics_json(by_method: pd.DataFrame) -> dict:
    """Per model and method: mRI, average OOD accuracy, source and D_ft accuracy after fine-tuning."""
    out: dict = {}
    for r in by_method.itertuples(index=False):
        entry = {"mri": round(r.mri, 4), "ood_ft": round(r.ood_ft, 4), "source_ft": round(r.source_ft, 4),
                 "finetune_ft": round(r.finetune_ft, 4)}
        if hasattr(r, "mri_leak_free"):
            entry["mri_leak_free"] = round(r.mri_leak_free, 4)
        out.setdefault(r.model, {})[r.method] = entry
    return out


def sweep_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, D_ft, alpha): accuracy on the source domain, on D_ft (held-out) and the
    mean over the OOD datasets, in percent."""
    columns = ["model", "method", "finetune_dataset", "alpha", "source", "finetune", "ood", "n_ood"]
    if points.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for key, g in points.groupby(["model", "method", "finetune_dataset", "alpha"], sort=False):
        ood = g[g.role == "ood"]
        out.append(dict(zip(columns[:4], key), source=100 * g[g.role == "source"].top1.mean(),
                        finetune=100 * g[g.role == "finetune"].top1.mean(), ood=100 * ood.top1.mean(),
                        n_ood=len(ood)))
    return pd.DataFrame(out, columns=columns)


def photo_families(params: dict) -> dict[str, str] | None:
    """Dataset -> photo family, for the leak-free protocol (split.leak_free); None when it is off."""
    if not params["split"].get("leak_free"):
        return None
    from .data.suites import get_suite

    suite = get_suite(params)
    families = {n: suite.dataset(n).photos for n in grid.eval_datasets(params)}
    return {n: family for n, family in families.items() if family}


def metrics_table(cells: pd.DataFrame, families: dict[str, str] | None = None) -> pd.DataFrame:
    """Join every fine-tuned cell with its pretrained counterpart: A_pre, A_ft and RI in percent.

    With ``families`` (the leak-free protocol), ``*_leak_free`` columns beside: where D_ft and the
    evaluation dataset render the same photos, both accuracies are taken on the held-out photos only
    (the family's split is by photo, so those are photos no model of the family was fine-tuned on);
    elsewhere they equal the paper protocol's."""
    pre = cells[cells.method == grid.PRETRAINED].set_index(["model", "eval_dataset"])
    ft = cells[cells.method != grid.PRETRAINED]
    out = []
    for r in ft.itertuples(index=False):
        p = pre.loc[(r.model, r.eval_dataset)]
        a_pre = p.heldout_top1 if r.role == "finetune" else p.top1
        row = {"model": r.model, "method": r.method, "finetune_dataset": r.finetune_dataset,
               "eval_dataset": r.eval_dataset, "role": r.role,
               "acc_pre": 100 * a_pre, "acc_ft": 100 * r.top1,
               "ri": 100 * metrics.robustness_improvement(r.top1, a_pre)}
        if families is not None:
            family = families.get(r.finetune_dataset)
            shared = family is not None and families.get(r.eval_dataset) == family
            lf_pre, lf_ft = (p.heldout_top1, r.heldout_top1) if shared else (a_pre, r.top1)
            row.update(shares_photos=shared, acc_pre_leak_free=100 * lf_pre, acc_ft_leak_free=100 * lf_ft,
                       ri_leak_free=100 * metrics.robustness_improvement(lf_ft, lf_pre))
        out.append(row)
    return pd.DataFrame(out)


LEAK_FREE_COLUMNS = ["source_pre_leak_free", "source_ft_leak_free", "ood_pre_leak_free", "ood_ft_leak_free",
                     "mri_leak_free"]


def _protocol_summary(g: pd.DataFrame, suffix: str = "") -> dict:
    ood = g[g.role == "ood"]
    pre = dict(zip(ood.eval_dataset, ood["acc_pre" + suffix]))
    ft = dict(zip(ood.eval_dataset, ood["acc_ft" + suffix]))
    names = list(ood.eval_dataset)
    src = g[g.role == "source"].iloc[0]
    return {"source_pre" + suffix: src["acc_pre" + suffix], "source_ft" + suffix: src["acc_ft" + suffix],
            "ood_pre" + suffix: metrics.average_accuracy(pre, names),
            "ood_ft" + suffix: metrics.average_ood_after(ft, pre, names),
            "mri" + suffix: metrics.mean_robustness_improvement(ft, pre, names), "n_ood": len(names)}


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, D_ft); with the leak-free protocol's columns when the table has them."""
    out = []
    leak_free = "ri_leak_free" in table.columns
    for (model, method, dft), g in table.groupby(["model", "method", "finetune_dataset"], sort=False):
        own = g[g.role == "finetune"].iloc[0]
        paper = _protocol_summary(g)
        row = {"model": model, "method": method, "finetune_dataset": dft,
               "source_pre": paper["source_pre"], "source_ft": paper["source_ft"],
               "finetune_pre": own.acc_pre, "finetune_ft": own.acc_ft,
               **{k: paper[k] for k in ("ood_pre", "ood_ft", "mri", "n_ood")}}
        if leak_free:
            row.update({k: v for k, v in _protocol_summary(g, "_leak_free").items() if k in LEAK_FREE_COLUMNS})
        out.append(row)
    return pd.DataFrame(out)


def method_summary(summary: pd.DataFrame) -> pd.DataFrame:
    grouped = summary.groupby(["model", "method"], sort=False)
    columns = SUMMARY_COLUMNS + (["mri_leak_free"] if "mri_leak_free" in summary.columns else [])
    out = grouped[columns].mean().reset_index()
    out.insert(2, "n_finetune_datasets", grouped.size().values)
    return out


def to_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def fmt(v):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


LEAK_FREE_CAPTION = ("Where D_ft and an evaluation dataset render the same photos (ImageNet val, -C, -Cartoon, "
                     "-Drawing), both accuracies on the photos held out of every fine-tuning (the split is by "
                     "photo); elsewhere as the paper's protocol. `mri` is the paper protocol's, for comparison.")


def leak_free_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The leak-free protocol's columns per (model, method, D_ft), with the paper protocol's mRI beside."""
    return summary[["model", "method", "finetune_dataset", *LEAK_FREE_COLUMNS, "mri"]]


ROBUSTNESS_TABLES = ("robustness", "robustness_cells", "baseline", "baseline_lines")  # written as CSV


def robustness_tables(params: dict, cells: pd.DataFrame, root: str | os.PathLike = ".") -> dict:
    """Effective robustness before and after fine-tuning (:func:`rib.robustness.tables`), its
    baseline fit on the grid's pretrained models, their pretraining snapshots (``rib
    evaluate-snapshots``) and the reference models of ``robustness.reference``."""
    from . import robustness
    from .config import robustness_settings

    settings = robustness_settings(params)
    source = params["grid"]["source"]
    pre = cells[cells.method == grid.PRETRAINED]
    pretrained = {m: dict(zip(g.eval_dataset, g.top1)) for m, g in pre.groupby("model", sort=False)}
    snapshots = [read_record(Path(root) / grid.path("snapshot_cells", suite=params["suite"], model=m))
                 for m in grid.snapshot_models(params)]
    # the reference table: relative to the project folder, as the pipeline's other files under root
    reference = robustness.read_reference(Path(root) / settings["reference"]) if settings["reference"] else None
    if reference is not None and not any(source in acc for acc in reference.values()):
        raise ValueError(f"{settings['reference']}: no model has a {source!r} column (grid.source: the "
                         "pretraining-domain accuracy every baseline point needs)")
    points = robustness.baseline_points(pretrained, snapshots, reference)
    out = robustness.tables(cells, points, source, params["grid"]["datasets"], settings["scale"])
    out["fit_on"] = robustness.fit_description(points)
    out["scale"] = settings["scale"]
    return out


def robustness_text(er: dict, suite: str) -> tuple[str, str]:
    """effective_robustness.md and .tex: what the lines were fit on, the lines, and effective
    robustness before and after per method (mean over D_ft) and per D_ft."""
    summary = er["robustness"]
    by_method = summary.groupby(["model", "method"], sort=False)[["id_pre", "id_ft", "er_pre", "er_ft", "er_change"]]
    by_method = by_method.mean().reset_index()
    lines = er["baseline_lines"]
    about = (f"Effective robustness (Taori et al. 2020): OOD accuracy minus the accuracy that the baseline line "
             f"predicts from pretraining-domain (ID) accuracy; the lines are fit on {er['scale']} axes, per "
             f"evaluation dataset, on {er['fit_on']}. `er_pre`/`er_ft`: before and after fine-tuning, mean over D "
             "minus D_ft, in points; `id_*`: pretraining-domain accuracy (%).")
    md = (f"# Effective robustness: suite {suite}\n\n{about}\n\n## Baseline lines\n\n"
          + to_markdown(lines, digits=3)
          + "\n## Per pretrained model and method (mean over fine-tuning datasets)\n\n" + to_markdown(by_method)
          + "\n## Per fine-tuning dataset\n\n" + to_markdown(summary))
    tex = (to_latex(lines.drop(columns=["fit_on"]), f"Baseline lines of effective robustness ({er['scale']} axes), "
                    f"fit on {er['fit_on']}.", "tab:rib-baseline", digits=3)
           + "\n" + to_latex(by_method, "Effective robustness (points) before and after fine-tuning, mean over "
                             "fine-tuning datasets.", "tab:rib-er-methods")
           + "\n" + to_latex(summary, "Effective robustness (points) per fine-tuning dataset.", "tab:rib-er-datasets"))
    return md, tex


def write_tables(params: dict, out_paths: dict[str, str], root: str | os.PathLike = ".") -> dict[str, pd.DataFrame]:
    cells = collect(params, root)
    er = robustness_tables(params, cells, root)  # first: a bad reference table stops before any table is written
    table = metrics_table(cells, photo_families(params))
    summary = summary_table(table)
    paper_summary = summary.drop(columns=["n_ood", *LEAK_FREE_COLUMNS], errors="ignore")
    by_method = method_summary(summary)
    sweeps = sweep_table(cells.attrs.get("sweeps", pd.DataFrame()))
    matrix = ri_matrix(table)
    corruption = cells.attrs.get("corruptions", pd.DataFrame())
    distances = distance_table(params, summary, root)
    write_csv(sweeps, out_paths["sweeps"])
    write_csv(matrix, out_paths["ri_matrix"])
    write_csv(corruption, out_paths["corruptions"])
    write_csv(distances, out_paths["distances"])
    write_json(out_paths["metrics_json"], metrics_json(by_method))
    tex = (to_latex(by_method, f"ImageNet-RIB on {params['suite']}: per pretrained model and method, mean over "
                    "fine-tuning datasets (accuracy in \\%).", "tab:rib-methods")
           + "\n" + to_latex(paper_summary, "Per fine-tuning dataset.", "tab:rib-datasets")
           + ("\n" + to_latex(leak_free_table(summary), LEAK_FREE_CAPTION, "tab:rib-leak-free")
              if "mri_leak_free" in summary.columns else "")
           + "\n" + to_latex(matrix, "Robustness improvement (points) per fine-tuning dataset and evaluation "
                              "dataset.", "tab:rib-ri")
           + ("\n" + to_latex(corruption, "ImageNet-C: accuracy per corruption (mean over severities).",
                               "tab:rib-imagenet-c") if not corruption.empty else ""))
    with atomic_path(out_paths["summary_tex"]) as tmp:
        tmp.write_text(tex)
    write_csv(cells, out_paths["cells"])
    write_csv(table, out_paths["metrics"])
    write_csv(summary, out_paths["summary"])
    write_csv(by_method, out_paths["methods_summary"])
    md = (f"# ImageNet-RIB results: suite {params['suite']}\n\n"
          "Accuracies in %. `ood_*`: average over D minus D_ft; `mri` = mean robustness improvement; "
          "`finetune_*`: held-out part of D_ft; `source_*`: pretraining domain.\n\n"
          "## Per pretrained model and method (mean over fine-tuning datasets)\n\n"
          + to_markdown(by_method) +
          "\n## Per fine-tuning dataset\n\n" + to_markdown(paper_summary)
          + (f"\n## Leak-free protocol\n\n{LEAK_FREE_CAPTION}\n\n" + to_markdown(leak_free_table(summary))
             if "mri_leak_free" in summary.columns else "")
          + "\n## Robustness improvement per fine-tuning and evaluation dataset (points)\n\n" + to_markdown(matrix)
          + ("\n## ImageNet-C per corruption (accuracy, mean over severities)\n\n" + to_markdown(corruption)
             if not corruption.empty else "")
          + "\n## Dataset distance (OTDD to the pretraining domain) and pretraining-domain accuracy lost\n\n"
          + to_markdown(distances))
    with atomic_path(out_paths["summary_md"]) as tmp:
        tmp.write_text(md)
    for key in ROBUSTNESS_TABLES:
        write_csv(er[key], out_paths[key])
    er_md, er_tex = robustness_text(er, params["suite"])
    for key, text in (("robustness_md", er_md), ("robustness_tex", er_tex)):
        with atomic_path(out_paths[key]) as tmp:
            tmp.write_text(text)
    return {**{k: er[k] for k in ROBUSTNESS_TABLES},"cells": cells, "metrics": table, "summary": summary, "methods_summary": by_method, "sweeps": sweeps,
            "ri_matrix": matrix, "corruptions": corruption, "distances": distances}
