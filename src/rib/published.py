"""The paper's published numbers, and a run's beside them (``rib compare``).

Hwang et al. (arXiv 2410.21582) publish figures, not tables; these values were read off them
(to about +-0.05 points) and are the ones ../shared/BENCHMARK.md lists: ViT-B/16 fully fine-tuned
(FT) on ImageNet-R, top-1 accuracy (%) before -> after on ImageNet-1K val and four datasets of D for
two pretrainings, and the average OOD accuracy before -> after (and mRI) for all seven.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import grid
from .errors import RibError

SUITE = "imagenet-rib"
METHOD, FINETUNE = "ft", "r"

# The paper's labels of its seven pretrainings, and the registry (timm) names.
MODELS = {
    "IN-1K + AugReg": "vit_base_patch16_224.augreg_in1k",
    "IN-1K + SAM": "vit_base_patch16_224.sam_in1k",
    "IN-21K": "vit_base_patch16_224.orig_in21k_ft_in1k",
    "IN-21K-P": "vit_base_patch16_224_miil.in21k_ft_in1k",
    "IN-21K + AugReg": "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "OpenAI": "vit_base_patch16_clip_224.openai_ft_in1k",
    "LAION-2B": "vit_base_patch16_clip_224.laion2b_ft_in1k",
}

# FT on ImageNet-R: accuracy before -> after, per evaluation dataset (imagenet: ImageNet-1K val).
ACCURACY = {
    "IN-21K + AugReg": {"imagenet": (84.5, 73.8), "v2": (74.0, 63.7), "a": (43.2, 33.9), "sketch": (43.2, 52.4),
                        "objectnet": (48.4, 42.5)},
    "LAION-2B": {"imagenet": (85.5, 47.1), "v2": (75.6, 36.4), "a": (41.5, 7.2), "sketch": (55.4, 29.5),
                 "objectnet": (51.1, 19.4)},
}

# FT on ImageNet-R: average OOD accuracy before -> after (its difference is mRI).
AVERAGE_OOD = {
    "IN-1K + AugReg": (42.72, 44.01), "IN-1K + SAM": (42.88, 45.40), "IN-21K": (50.10, 49.99),
    "IN-21K-P": (53.32, 52.85), "IN-21K + AugReg": (57.78, 52.27), "OpenAI": (60.64, 22.61),
    "LAION-2B": (61.49, 23.40),
}


@dataclass
class Row:
    model: str  # the paper's label
    quantity: str
    paper: tuple[float, float]
    ours: tuple[float, float] | None

    @property
    def gap(self) -> float | None:
        """Ours after minus the paper's after (points)."""
        return None if self.ours is None else self.ours[1] - self.paper[1]


def compare(params: dict, root: str | Path = ".") -> list[Row]:
    """The published numbers beside the run's (None where the run has not computed that cell)."""
    if params["suite"] != SUITE:
        raise RibError(f"the paper's published numbers are for the {SUITE} suite; this params file runs "
                       f"{params['suite']!r} (try --params configs/imagenet-rib.yaml)")
    metrics = _read(Path(root) / grid.path("metrics", suite=SUITE))
    summary = _read(Path(root) / grid.path("summary", suite=SUITE))
    rows = []
    for label, name in MODELS.items():
        for dataset, paper in ACCURACY.get(label, {}).items():
            ours = None
            if metrics is not None:
                hit = metrics[(metrics.model == name) & (metrics.method == METHOD) & (metrics.finetune_dataset == FINETUNE)
                              & (metrics.eval_dataset == dataset)]
                ours = (float(hit.acc_pre.iloc[0]), float(hit.acc_ft.iloc[0])) if len(hit) else None
            rows.append(Row(label, f"top-1 {dataset}", paper, ours))
        ours = None
        if summary is not None:
            hit = summary[(summary.model == name) & (summary.method == METHOD) & (summary.finetune_dataset == FINETUNE)]
            ours = (float(hit.ood_pre.iloc[0]), float(hit.ood_ft.iloc[0])) if len(hit) else None
        rows.append(Row(label, "average OOD", AVERAGE_OOD[label], ours))
    return rows


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def render(rows: list[Row]) -> str:
    def pair(p):
        return "not computed" if p is None else f"{p[0]:.1f} -> {p[1]:.1f}"

    lines = [f"FT on ImageNet-R ({METHOD} on {FINETUNE}), top-1 % before -> after; the paper's values read off its figures",
             "| pretraining | quantity | paper | this run | after: this run - paper |", "|---|---|---|---|---|"]
    for r in rows:
        gap = "" if r.gap is None or math.isnan(r.gap) else f"{r.gap:+.1f}"
        lines.append(f"| {r.model} | {r.quantity} | {pair(r.paper)} | {pair(r.ours)} | {gap} |")
    done = sum(r.ours is not None for r in rows)
    lines.append(f"{done} of {len(rows)} published numbers computed by this run (reports/{SUITE}/).")
    return "\n".join(lines) + "\n"
