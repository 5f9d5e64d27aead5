"""Fine-tuning methods, registered by name.

A method is one small class in its own module. Registering a new one is one entry here; the
trainer never names a method. Entries hold an import path (reading the registry for configuration
checks does not import torch), the method's kind and its own settings with their defaults (the
paper's) as JSON Schema.

Kinds:

* ``train``: trains from the pretrained model (or from another method's checkpoint, ``init_from``)
  and writes a checkpoint (:mod:`rib.methods.base`).
* ``weights``: combines the pretrained model and finished checkpoints in weight space, without
  training (WiSE-FT, model soups, Model Stock; :mod:`rib.methods.weights`). Its inputs are other
  entries of ``methods``, named by its settings (``ingredients_from``).

An entry of ``methods`` in params.yaml is an *instance*: its key is the name the grid and tables
use, ``method:`` names the registered implementation (default: the key), and the rest overrides
the ``train`` schedule and the method's settings. Two entries may share an implementation (``ft``
and ``ft_seed1: {method: ft, seed: 1}``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..errors import UnknownNameError

_STRENGTH = {"type": "number", "minimum": 0}
_REFERENCE = {
    "samples": {"type": "integer", "minimum": 1, "default": 1000,
                "description": "pretraining-domain images used to estimate the importance weights"},
    "reference": {"type": ["string", "null"], "default": None,
                  "description": "dataset of pretraining-domain images; null: the model's pretraining corpus "
                                 "when the pipeline pretrained it, else grid.source"},
}
_INGREDIENTS = {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string", "minLength": 1}}
_SOUP = {**_INGREDIENTS, "default": ["ft", "lp_ft", "l2sp", "ewc", "lwf", "mas"]}


@dataclass(frozen=True)
class MethodInfo:
    target: str                      # "module:Class"
    kind: str = "train"              # train | weights
    summary: str = ""
    options: dict = field(default_factory=dict)    # setting -> JSON Schema (with "default")
    init_from: str | None = None     # setting naming the method entry whose checkpoint starts training
    ingredients_from: tuple[str, ...] = ()         # settings naming the entries a weight-space method combines
    needs_reference: bool = False    # reads pretraining-domain data (importance weights)
    plain_checkpoint: bool = True    # its checkpoint is a model of the pretrained architecture

    def defaults(self) -> dict:
        return {k: s["default"] for k, s in self.options.items() if "default" in s}


METHODS: dict[str, MethodInfo] = {
    "ft": MethodInfo("rib.methods.ft:FullFineTuning", summary="full fine-tuning"),
    "lp": MethodInfo("rib.methods.lp:LinearProbing", summary="linear probing: the head only"),
    "lp_ft": MethodInfo(
        "rib.methods.ft:FullFineTuning", summary="LP-FT: full fine-tuning started from the finished LP checkpoint",
        options={"lp": {"type": "string", "minLength": 1, "default": "lp",
                        "description": "the methods entry (a linear probe) whose checkpoint starts fine-tuning"}},
        init_from="lp"),
    "lora": MethodInfo(
        "rib.methods.lora:LoRA", summary="low-rank adapters on the attention projections",
        options={"rank": {"type": "integer", "minimum": 1, "default": 8},
                 "alpha": {"type": "number", "exclusiveMinimum": 0, "default": 16},
                 "targets": {"type": "array", "minItems": 1, "uniqueItems": True,
                             "items": {"enum": ["q", "k", "v"]}, "default": ["q", "v"]},
                 "train_head": {"type": "boolean", "default": False}}),
    "visual_prompt": MethodInfo(
        "rib.methods.prompt:VisualPrompt", summary="a learned pad prompt around the image; the model is frozen",
        options={"width": {"type": "integer", "minimum": 1, "default": 30,
                           "description": "pixels of the border the prompt covers"}},
        plain_checkpoint=False),
    "ewc": MethodInfo(
        "rib.methods.regularized:EWC",
        summary="elastic weight consolidation: a pull to the pretrained weights weighted by the diagonal Fisher",
        options={"strength": {**_STRENGTH, "default": 1000.0}, **_REFERENCE}, needs_reference=True),
    "l2sp": MethodInfo(
        "rib.methods.regularized:L2SP", summary="L2-SP: a uniform L2 pull to the pretrained weights",
        options={"strength": {**_STRENGTH, "default": 0.1}}),
    "lwf": MethodInfo(
        "rib.methods.lwf:LwF", summary="learning without forgetting: distillation to the pretrained model's logits",
        options={"temperature": {"type": "number", "exclusiveMinimum": 0, "default": 2.0},
                 "strength": {**_STRENGTH, "default": 1.0}}),
    "mas": MethodInfo(
        "rib.methods.regularized:MAS",
        summary="memory aware synapses: a pull weighted by the sensitivity of the output norm",
        options={"strength": {**_STRENGTH, "default": 1.0}, **_REFERENCE}, needs_reference=True),
    "wise_ft": MethodInfo(
        "rib.methods.weights:WiSEFT", kind="weights",
        summary="WiSE-FT: interpolation between the pretrained and a fine-tuned model",
        options={"of": {"type": "string", "minLength": 1, "default": "ft"},
                 "alphas": {"type": "array", "minItems": 1, "uniqueItems": True,
                            "items": {"type": "number", "minimum": 0, "maximum": 1},
                            "default": [round(0.1 * i, 1) for i in range(11)]},
                 "alpha": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                           "description": "the mixing weight the tables report (one of alphas)"}},
        ingredients_from=("of",)),
    "uniform_soup": MethodInfo(
        "rib.methods.weights:UniformSoup", kind="weights", summary="uniform model soup: the mean of fine-tuned weights",
        options={"ingredients": _SOUP}, ingredients_from=("ingredients",)),
    "greedy_soup": MethodInfo(
        "rib.methods.weights:GreedySoup", kind="weights",
        summary="greedy soup: ingredients added best first while held-out D_ft accuracy does not drop",
        options={"ingredients": _SOUP}, ingredients_from=("ingredients",)),
    "model_stock": MethodInfo(
        "rib.methods.weights:ModelStock", kind="weights",
        summary="Model Stock: per layer, the average of fine-tuned models pulled to the pretrained one by their angle",
        options={"ingredients": {**_INGREDIENTS, "minItems": 2, "default": ["ft", "ft_seed1"]}},
        ingredients_from=("ingredients",)),
}

# Keys every entry may hold besides the method's own settings and the schedule.
COMMON_OPTIONS = {
    "method": {"type": "string", "minLength": 1},
    "seed": {"type": "integer", "minimum": 0, "description": "overrides the top-level seed for this entry"},
}


def info(name: str) -> MethodInfo:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownNameError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def implementation(params: dict, entry: str) -> str:
    """The registered method behind the ``methods`` entry ``entry``."""
    return params["methods"][entry].get("method", entry)


def entry_info(params: dict, entry: str) -> MethodInfo:
    return info(implementation(params, entry))


def entry_config(params: dict, entry: str) -> dict:
    """Schedule, then the method's defaults, then the entry's own settings."""
    settings = dict(params["methods"][entry])
    impl = settings.pop("method", entry)
    return {**params["train"], **info(impl).defaults(), **settings, "method": impl, "entry": entry}


def ingredients(params: dict, entry: str) -> list[str]:
    """The method entries a weight-space entry combines, in order."""
    config = entry_config(params, entry)
    out: list[str] = []
    for key in entry_info(params, entry).ingredients_from:
        value = config[key]
        out.extend([value] if isinstance(value, str) else value)
    return out


def init_entry(params: dict, entry: str) -> str | None:
    """The entry whose checkpoint starts this entry's training (LP-FT's linear probe), if any."""
    key = entry_info(params, entry).init_from
    return entry_config(params, entry)[key] if key else None


def get_method(name: str, config: dict):
    """Instantiate the registered method ``name`` with its merged configuration."""
    module, cls = info(name).target.split(":")
    return getattr(importlib.import_module(module), cls)(config)
