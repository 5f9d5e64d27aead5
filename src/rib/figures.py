"""The paper's figures, drawn from the aggregated tables.

* Radar chart: accuracy on every evaluation dataset before and after fine-tuning on the focus
  dataset (``report.focus_dataset``) with the focus method, one panel per pretrained model.
* Bar chart: average OOD accuracy before fine-tuning and after each method, per pretrained model,
  for the focus dataset and averaged over every fine-tuning dataset.
* RI heatmap: robustness improvement of every (D_ft, evaluation dataset) pair, per model, for the
  focus method.
* OOD scatter: average OOD accuracy before vs after fine-tuning, one point per (model, method),
  averaged over D_ft; below the diagonal robustness was lost.
* WiSE-FT curve: average OOD accuracy against D_ft (held-out) accuracy over the mixing weights.
* OTDD scatter: dataset distance to the pretraining domain against the pretraining-domain accuracy
  the focus method lost, one point per (model, D_ft).
* Effective robustness: OOD against pretraining-domain accuracy on logit axes, one panel per OOD
  dataset, the baseline line and its points, an arrow from pretrained to fine-tuned per method
  (focus dataset).

Every figure is written as PNG and PDF.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .grid import FIGURE_FORMATS, FIGURES
from .io import atomic_path

PRE_COLOR = "#7f7f7f"
# One colour per method: 15, the default grid's methods
METHOD_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd", "#e7ba52"]
MARKERS = "osD^v<>pPX*h"


def _save(fig, path) -> None:
    """``path``: one file, or a callable ext -> file (every figure is written as PNG and PDF)."""
    targets = [path(ext) for ext in ("png", "pdf")] if callable(path) else [path]
    for target in targets:
        fmt = os.path.splitext(str(target))[1].lstrip(".") or "png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata={"CreationDate": None}
                        if fmt == "pdf" else None)
    plt.close(fig)


def radar(metrics: pd.DataFrame, dataset: str, method: str, path: str | os.PathLike) -> None:
    sel = metrics[(metrics.finetune_dataset == dataset) & (metrics.method == method)]
    if sel.empty:
        raise ValueError(f"no results for fine-tuning dataset {dataset!r} with method {method!r}")
    models = list(dict.fromkeys(sel.model))
    axes_names = list(dict.fromkeys(sel.eval_dataset))
    angles = np.linspace(0, 2 * np.pi, len(axes_names), endpoint=False).tolist()
    cols = min(len(models), 4)
    rows = int(np.ceil(len(models) / cols))
    fig, axs = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), subplot_kw={"polar": True}, squeeze=False)
    for ax, model in zip(axs.flat, models):
        m = sel[sel.model == model].set_index("eval_dataset").loc[axes_names]
        for col, label, color in (("acc_pre", "pretrained", PRE_COLOR), ("acc_ft", f"after {method}", METHOD_COLORS[0])):
            vals = m[col].tolist()
            ax.plot(angles + angles[:1], vals + vals[:1], color=color, linewidth=1.6, label=label)
            ax.fill(angles + angles[:1], vals + vals[:1], color=color, alpha=0.12)
        ax.set_xticks(angles)
        ax.set_xticklabels([f"{n}\n(held-out)" if n == dataset else n for n in axes_names], fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_yticks([25, 50, 75])
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(model, fontsize=10, pad=14)
    for ax in list(axs.flat)[len(models):]:
        ax.set_visible(False)
    handles, labels = axs.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
    fig.suptitle(f"Top-1 accuracy (%) before and after fine-tuning on {dataset}", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    _save(fig, path)


def bar(summary: pd.DataFrame, dataset: str, path: str | os.PathLike) -> None:
    models = list(dict.fromkeys(summary.model))
    methods = list(dict.fromkeys(summary.method))
    panels = [(f"fine-tuned on {dataset}", summary[summary.finetune_dataset == dataset]),
              ("mean over all fine-tuning datasets", summary)]
    fig, axs = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(models)) * 2, 4.2), sharey=True)
    width = 0.8 / (len(methods) + 1)
    x = np.arange(len(models))
    for ax, (title, data) in zip(axs, panels):
        g = data.groupby(["model", "method"])[["ood_pre", "ood_ft"]].mean()
        pre = [g.loc[m].ood_pre.mean() for m in models]
        ax.bar(x - 0.4 + width / 2, pre, width, color=PRE_COLOR, label="pretrained")
        for k, method in enumerate(methods):
            vals = [g.loc[(m, method)].ood_ft if (m, method) in g.index else np.nan for m in models]
            ax.bar(x - 0.4 + width * (k + 1.5), vals, width, color=METHOD_COLORS[k % len(METHOD_COLORS)],
                   label=f"after {method}")
        ax.set_xticks(x)
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axs[0].set_ylabel("average OOD top-1 accuracy (%)")
    fig.tight_layout()
    handles, labels = axs[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)


def ri_heatmap(ri_matrix: pd.DataFrame, method: str, path) -> None:
    sel = ri_matrix[ri_matrix.method == method]
    if sel.empty:
        raise ValueError(f"no results for method {method!r}")
    models = list(dict.fromkeys(sel.model))
    evals = [c for c in ri_matrix.columns if c not in ("model", "method", "finetune_dataset")]
    limit = float(np.nanmax(np.abs(sel[evals].to_numpy()))) or 1.0
    fig, axs = plt.subplots(1, len(models), figsize=(0.6 * len(evals) * len(models) + 1.5, 0.5 * len(sel) / len(models) + 2),
                            squeeze=False)
    for ax, model in zip(axs[0], models):
        m = sel[sel.model == model].set_index("finetune_dataset")[evals]
        im = ax.imshow(m.to_numpy(dtype=float), cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(evals)), evals, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(m)), m.index, fontsize=8)
        for (i, j), v in np.ndenumerate(m.to_numpy(dtype=float)):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(v) > 0.6 * limit else "black")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("evaluation dataset", fontsize=8)
    axs[0][0].set_ylabel("fine-tuning dataset", fontsize=8)
    fig.colorbar(im, ax=axs[0].tolist(), shrink=0.8, label="RI (points)")
    fig.suptitle(f"Robustness improvement after {method}", fontsize=10)
    _save(fig, path)


def ood_scatter(summary: pd.DataFrame, path) -> None:
    g = summary.groupby(["model", "method"], sort=False)[["ood_pre", "ood_ft"]].mean().reset_index()
    models = list(dict.fromkeys(g.model))
    methods = list(dict.fromkeys(g.method))
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for r in g.itertuples(index=False):
        ax.scatter(r.ood_pre, r.ood_ft, color=METHOD_COLORS[methods.index(r.method) % len(METHOD_COLORS)],
                   marker=MARKERS[models.index(r.model) % len(MARKERS)], s=36, alpha=0.85)
    lo = min(g.ood_pre.min(), g.ood_ft.min()) - 3
    hi = max(g.ood_pre.max(), g.ood_ft.max()) + 3
    ax.plot([lo, hi], [lo, hi], color=PRE_COLOR, linestyle="--", linewidth=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("average OOD accuracy before fine-tuning (%)")
    ax.set_ylabel("average OOD accuracy after fine-tuning (%)")
    handles = [plt.Line2D([], [], color=METHOD_COLORS[i % len(METHOD_COLORS)], marker="o", linestyle="", label=m)
               for i, m in enumerate(methods)]
    handles += [plt.Line2D([], [], color="black", marker=MARKERS[i % len(MARKERS)], linestyle="", label=m)
                for i, m in enumerate(models)]
    ax.legend(handles=handles, fontsize=7, frameon=False, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title("Robustness before and after fine-tuning (mean over D_ft)", fontsize=10)
    _save(fig, path)


def wise_curve(sweeps: pd.DataFrame, path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if sweeps.empty:
        ax.text(0.5, 0.5, "no weight-space sweep in this grid", ha="center", va="center", transform=ax.transAxes)
    else:
        g = sweeps.groupby(["model", "method", "alpha"], sort=False)[["finetune", "ood"]].mean().reset_index()
        for k, ((model, method), curve) in enumerate(g.groupby(["model", "method"], sort=False)):
            curve = curve.sort_values("alpha")
            color = METHOD_COLORS[k % len(METHOD_COLORS)]
            ax.plot(curve.finetune, curve.ood, marker="o", markersize=3, color=color, label=f"{model} ({method})")
            for end, text in ((curve.iloc[0], "pretrained"), (curve.iloc[-1], "fine-tuned")):
                ax.annotate(f"{text} (α={end.alpha:g})", (end.finetune, end.ood), fontsize=7, color=color,
                            xytext=(4, 4), textcoords="offset points")
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel("accuracy on D_ft, held-out part (%)")
    ax.set_ylabel("average OOD accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title("WiSE-FT: mixing the pretrained and fine-tuned weights (mean over D_ft)", fontsize=10)
    _save(fig, path)


def otdd_scatter(distances: pd.DataFrame, method: str, path) -> None:
    column = f"source_drop_{method}"
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    models = list(dict.fromkeys(distances.model))
    for k, model in enumerate(models):
        d = distances[distances.model == model]
        ax.scatter(d.otdd, d[column], color=METHOD_COLORS[k % len(METHOD_COLORS)], label=model, s=30)
        for r in d.itertuples(index=False):
            ax.annotate(r.finetune_dataset, (r.otdd, getattr(r, column)), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    if len(distances) > 2:
        x, y = distances.otdd.to_numpy(float), distances[column].to_numpy(float)
        ok = ~(np.isnan(x) | np.isnan(y))
        if ok.sum() > 2:
            r = np.corrcoef(x[ok], y[ok])[0, 1]
            ax.text(0.02, 0.96, f"Pearson r = {r:.2f}", transform=ax.transAxes, fontsize=8, va="top")
    ax.set_xlabel("OTDD(pretraining domain, D_ft) on pre-logit features")
    ax.set_ylabel(f"pretraining-domain accuracy lost by {method} (points)")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    ax.set_title("Dataset distance vs forgetting", fontsize=10)
    _save(fig, path)


def _percent_ticks(ax, lo: float, hi: float, scale: str, axis: str) -> None:
    """Ticks at round accuracies on a logit or probit axis spanning [lo, hi] (axis values)."""
    from .robustness import inverse, transform

    marks = [0.1, 0.5, 1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5, 99.9]
    inside = [m for m in marks if lo <= transform(m / 100, scale) <= hi]
    if len(inside) < 2:  # a narrow range: its two ends
        inside = [100 * inverse(lo, scale), 100 * inverse(hi, scale)]
    getattr(ax, f"set_{axis}ticks")([transform(m / 100, scale) for m in inside])
    getattr(ax, f"set_{axis}ticklabels")([f"{m:g}" if m >= 1 else f"{m:.1f}" for m in inside], fontsize=7)


def effective_robustness(cells: pd.DataFrame, baseline: pd.DataFrame, lines: pd.DataFrame, dataset: str,
                         path) -> None:
    """The classic scatter of OOD against ID (pretraining-domain) accuracy on logit (or probit)
    axes, one panel per OOD dataset: the baseline points and the line fit on them, and an arrow from
    each pretrained model to each method's fine-tuned model on ``dataset``. Points above the line
    are effectively robust; an arrow that ends further below it than it started lost robustness
    beyond what the change in ID accuracy explains."""
    from .robustness import fit_description, transform

    sel = cells[cells.finetune_dataset == dataset]
    if sel.empty:
        raise ValueError(f"effective robustness: no results for fine-tuning dataset {dataset!r}")
    scale = lines.scale.iloc[0] if len(lines) else "logit"
    panels = [d for d in lines.eval_dataset if d != dataset]
    if not panels:
        raise ValueError(f"effective robustness: no OOD dataset besides the fine-tuning dataset {dataset!r}")
    id_col = baseline.columns[4]  # the ID dataset: the first accuracy column
    methods = list(dict.fromkeys(sel.method))
    models = list(dict.fromkeys(sel.model))
    cols = min(len(panels), 4)
    rows = int(np.ceil(len(panels) / cols))
    fig, axs = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows + 0.9), squeeze=False)

    def t(values):
        return np.array([transform(min(max(v / 100, 0.0), 1.0), scale) for v in values])

    for ax, ev in zip(axs.flat, panels):
        base = baseline[baseline[id_col].notna() & baseline[ev].notna()]
        arrows = sel[sel.eval_dataset == ev]
        xs = np.concatenate([t(base[id_col]), t(arrows.id_pre), t(arrows.id_ft)])
        ys = np.concatenate([t(base[ev]), t(arrows.ood_pre), t(arrows.ood_ft)])
        for kind, style in (("snapshot", dict(marker="o", s=12, color="#b0b0b0", label="pretraining snapshot")),
                            ("reference", dict(marker="x", s=18, color="#606060", label="reference model")),
                            ("pretrained", dict(marker="o", s=34, facecolor="white", edgecolor="black",
                                                label="pretrained (grid)"))):
            b = base[base.kind == kind]
            if len(b):
                ax.scatter(t(b[id_col]), t(b[ev]), zorder=3, **style)
        row = lines[lines.eval_dataset == ev].iloc[0]
        pad = 0.15 * max(np.ptp(xs), np.ptp(ys), 0.5)
        x_lo, x_hi, y_lo, y_hi = xs.min() - pad, xs.max() + pad, ys.min() - pad, ys.max() + pad
        if pd.notna(row.slope):
            grid_x = np.linspace(x_lo, x_hi, 50)
            ax.plot(grid_x, row.slope * grid_x + row.intercept, color="black", lw=1, ls="--", zorder=2,
                    label="baseline line")
            ax.set_title(f"{ev}  (R$^2$ {row.r2:.2f}, {int(row.n_points)} points)", fontsize=9)
        else:
            ax.set_title(f"{ev}  (no line: {int(len(base))} point(s))", fontsize=9)
        for i, method in enumerate(methods):
            color = METHOD_COLORS[i % len(METHOD_COLORS)]
            for r in arrows[arrows.method == method].itertuples(index=False):
                start, end = t([r.id_pre, r.ood_pre]), t([r.id_ft, r.ood_ft])
                ax.annotate("", xy=tuple(end), xytext=tuple(start), zorder=4,
                            arrowprops=dict(arrowstyle="-|>", color=color, lw=0.9, shrinkA=2, shrinkB=0,
                                            mutation_scale=7))
                ax.scatter(*end, s=14, color=color, marker=MARKERS[models.index(r.model) % len(MARKERS)], zorder=5)
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        _percent_ticks(ax, x_lo, x_hi, scale, "x")
        _percent_ticks(ax, y_lo, y_hi, scale, "y")
        ax.grid(alpha=0.3)
        ax.set_xlabel(f"{id_col} accuracy (%, {scale})", fontsize=8)
        ax.set_ylabel(f"{ev} accuracy (%, {scale})", fontsize=8)
    for ax in list(axs.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axs.flat[0].get_legend_handles_labels()
    handles += [plt.Line2D([], [], color=METHOD_COLORS[i % len(METHOD_COLORS)], lw=2) for i in range(len(methods))]
    labels += [f"after {m}" for m in methods]
    handles += [plt.Line2D([], [], ls="", marker=MARKERS[i % len(MARKERS)], color="black") for i in range(len(models))]
    labels += models
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fitted_on = fit_description(baseline.to_dict("records"))
    fig.suptitle(f"Effective robustness: fine-tuned on {dataset}, arrows from pretrained to fine-tuned\n"
                 f"baseline line per dataset ({scale} axes) fit on {fitted_on}", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 6), 1, 0.95))
    _save(fig, path)


def draw_all(tables: dict[str, str], report: dict, figure_path) -> list[str]:
    """Every figure from the aggregated tables; ``figure_path(name, ext)`` names the files."""
    metrics = pd.read_csv(tables["metrics"])
    summary = pd.read_csv(tables["summary"])
    sweeps = pd.read_csv(tables["sweeps"])
    distances = pd.read_csv(tables["distances"])
    matrix = pd.read_csv(tables["ri_matrix"])
    dataset, method = report["focus_dataset"], report["focus_method"]

    def target(name):
        return lambda ext: figure_path(name, ext)

    radar(metrics, dataset, method, target("radar"))
    bar(summary, dataset, target("bar"))
    ri_heatmap(matrix, method, target("ri_heatmap"))
    ood_scatter(summary, target("ood_scatter"))
    wise_curve(sweeps, target("wise_curve"))
    otdd_scatter(distances, method, target("otdd_scatter"))
    effective_robustness(pd.read_csv(tables["robustness_cells"]), pd.read_csv(tables["baseline"]),
                         pd.read_csv(tables["baseline_lines"], keep_default_na=False, na_values=[""]), dataset,
                         target("effective_robustness"))
    return [figure_path(n, e) for n in FIGURES for e in FIGURE_FORMATS]
