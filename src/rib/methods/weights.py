"""Weight-space methods: new models made from the pretrained one and finished fine-tuned ones, without training.

* WiSE-FT (Wortsman et al., 2022): ``(1 - alpha) * theta0 + alpha * theta_ft`` for every alpha
  of a sweep; alpha = 0 is the pretrained model, alpha = 1 the fine-tuned one.
* Uniform soup (Wortsman et al., 2022): the mean of the ingredients' weights.
* Greedy soup: ingredients sorted by held-out accuracy on D_ft, each added to the soup only if the
  soup's held-out accuracy does not drop.
* Model Stock (Jang et al., 2024): per weight tensor, with ``cos`` the mean pairwise cosine between
  the ingredients' updates ``theta_i - theta0``, ``t = N cos / (1 + (N - 1) cos)`` and the result
  ``t * mean_i theta_i + (1 - t) * theta0`` (cos is clipped to [0, 1]).

Each method turns state dicts into a list of (variant settings, state dict) to evaluate; a
``score`` callable gives the held-out D_ft accuracy of a state dict where a method chooses.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

StateDict = dict[str, torch.Tensor]


def _is_float(t: torch.Tensor) -> bool:
    return torch.is_floating_point(t)


def check_compatible(reference: StateDict, others: dict[str, StateDict]) -> None:
    for name, sd in others.items():
        if sd.keys() != reference.keys():
            missing = sorted(set(reference) ^ set(sd))[:1]
            raise ValueError(f"{name}: weights do not match the pretrained model's (first differing key: {missing})")
        for k, v in sd.items():
            if v.shape != reference[k].shape:
                raise ValueError(f"{name}: {k} has shape {tuple(v.shape)}, the pretrained model {tuple(reference[k].shape)}")


def interpolate(theta0: StateDict, theta1: StateDict, alpha: float) -> StateDict:
    return {k: (1 - alpha) * v0 + alpha * theta1[k] if _is_float(v0) else theta1[k].clone()
            for k, v0 in theta0.items()}


def average(states: list[StateDict]) -> StateDict:
    first = states[0]
    return {k: torch.stack([s[k] for s in states]).mean(0) if _is_float(v) else v.clone() for k, v in first.items()}


def stock_ratio(theta0: torch.Tensor, tensors: list[torch.Tensor]) -> float:
    """Model Stock's interpolation ratio t for one weight tensor."""
    deltas = [(t - theta0).flatten().double() for t in tensors]
    cosines = []
    for a, b in itertools.combinations(deltas, 2):
        denom = a.norm() * b.norm()
        cosines.append(float(a @ b / denom) if denom > 0 else 1.0)
    cos = min(max(sum(cosines) / len(cosines), 0.0), 1.0)
    n = len(tensors)
    return n * cos / (1 + (n - 1) * cos) if cos > 0 else 0.0


def model_stock(theta0: StateDict, states: list[StateDict]) -> tuple[StateDict, dict[str, float]]:
    merged, ratios = {}, {}
    for k, v0 in theta0.items():
        if not _is_float(v0):
            merged[k] = states[0][k].clone()
            continue
        tensors = [s[k] for s in states]
        t = stock_ratio(v0, tensors)
        ratios[k] = t
        merged[k] = t * torch.stack(tensors).mean(0) + (1 - t) * v0
    return merged, ratios


class WeightSpaceMethod:
    name = "weights"

    def __init__(self, config: dict):
        self.config = dict(config)

    def variants(self, theta0: StateDict, ingredients: dict[str, StateDict],
                 score: Callable[[StateDict], float]) -> tuple[list[tuple[dict, StateDict]], dict]:
        """([(variant settings, weights)], a record of the choices made); the first variant is the headline
        one unless a variant's settings say ``headline: True``."""
        raise NotImplementedError


class WiSEFT(WeightSpaceMethod):
    name = "wise_ft"

    def variants(self, theta0, ingredients, score):
        (_, theta1), = ingredients.items()
        alphas = [float(a) for a in self.config["alphas"]]
        headline = float(self.config["alpha"])
        return [({"alpha": a, "headline": a == headline}, interpolate(theta0, theta1, a)) for a in alphas], {}


class UniformSoup(WeightSpaceMethod):
    name = "uniform_soup"

    def variants(self, theta0, ingredients, score):
        return [({"ingredients": list(ingredients)}, average(list(ingredients.values())))], {}


def greedy_soup(ingredients: dict[str, StateDict], score: Callable[[StateDict], float]) -> tuple[list[str], list[dict]]:
    """The greedy recipe: returns (chosen names, the trail of every decision with held-out accuracies)."""
    alone = {name: score(sd) for name, sd in ingredients.items()}
    ranked = sorted(alone, key=lambda n: (-alone[n], list(ingredients).index(n)))
    chosen = [ranked[0]]
    best = alone[ranked[0]]
    trail = [{"ingredient": ranked[0], "alone": alone[ranked[0]], "soup": best, "added": True}]
    for name in ranked[1:]:
        candidate = score(average([ingredients[n] for n in chosen + [name]]))
        added = candidate >= best
        trail.append({"ingredient": name, "alone": alone[name], "soup": candidate, "added": added})
        if added:
            chosen.append(name)
            best = candidate
    return chosen, trail


class GreedySoup(WeightSpaceMethod):
    name = "greedy_soup"

    def variants(self, theta0, ingredients, score):
        chosen, trail = greedy_soup(ingredients, score)
        return [({"ingredients": chosen}, average([ingredients[n] for n in chosen]))], {"greedy_trail": trail}


class ModelStock(WeightSpaceMethod):
    name = "model_stock"

    def variants(self, theta0, ingredients, score):
        merged, ratios = model_stock(theta0, list(ingredients.values()))
        values = list(ratios.values())
        record = {"ratio_mean": sum(values) / len(values) if values else None,
                  "ratio_min": min(values, default=None), "ratio_max": max(values, default=None)}
        return [({"ingredients": list(ingredients)}, merged)], record
