"""The paper's figures, drawn from the aggregated tables.

* Radar chart: accuracy on every evaluation dataset before and after fine-tuning on the focus
  dataset (``report.focus_dataset``) with the focus method, one panel per pretrained model.
* Bar chart: average OOD accuracy before fine-tuning and after each method, per pretrained model,
  for the focus dataset and averaged over every fine-tuning dataset.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .io import atomic_path

PRE_COLOR = "#7f7f7f"
METHOD_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _save(fig, path: str | os.PathLike) -> None:
    fmt = os.path.splitext(str(path))[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
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
    axs[0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)
