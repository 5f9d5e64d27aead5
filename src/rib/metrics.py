"""The metrics of ImageNet-RIB (accuracies are fractions in [0, 1] here).

* RI(i) = A_ft(i) - A_pre(i): robustness improvement on OOD dataset i.
* mRI = mean of RI(i) over the OOD datasets i != D_ft.
* Average OOD accuracy after fine-tuning = mRI + mean_i A_pre(i) (= mean_i A_ft(i)).
* ImageNet-C: accuracy per corruption is the mean over its severities; the dataset's accuracy is
  the mean over corruptions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence


def corruption_accuracy(group_top1: Mapping[str, float]) -> tuple[dict[str, float], float]:
    """From {'corruption/severity': top1} to ({corruption: mean over severities}, mean over corruptions)."""
    if not group_top1:
        raise ValueError("no corruption groups to aggregate")
    by_corruption: dict[str, list[float]] = defaultdict(list)
    for group, top1 in group_top1.items():
        corruption, _, severity = group.rpartition("/")
        if not corruption or not severity:
            raise ValueError(f"group {group!r} is not of the form 'corruption/severity'")
        by_corruption[corruption].append(top1)
    per = {c: sum(v) / len(v) for c, v in sorted(by_corruption.items())}
    return per, sum(per.values()) / len(per)


def robustness_improvement(a_ft: float, a_pre: float) -> float:
    return a_ft - a_pre


def mean_robustness_improvement(a_ft: Mapping[str, float], a_pre: Mapping[str, float],
                                ood: Sequence[str]) -> float:
    if not ood:
        raise ValueError("mRI needs at least one OOD dataset")
    return sum(robustness_improvement(a_ft[i], a_pre[i]) for i in ood) / len(ood)


def average_accuracy(acc: Mapping[str, float], datasets: Sequence[str]) -> float:
    return sum(acc[i] for i in datasets) / len(datasets)


def average_ood_after(a_ft: Mapping[str, float], a_pre: Mapping[str, float], ood: Sequence[str]) -> float:
    """The paper's bar-chart value: mRI + mean pretrained OOD accuracy."""
    return mean_robustness_improvement(a_ft, a_pre, ood) + average_accuracy(a_pre, ood)
