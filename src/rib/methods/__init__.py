"""Fine-tuning methods, registered by name.

A method is one small class in its own module. Registering a new one is one entry here; the
trainer never names a method. Entries hold an import path (reading the registry for configuration
checks does not import torch), the method's kind and its own settings with their defaults as JSON
Schema. A method the paper's own code has (FieteLab/ImageNet-RIB) names its ``--regularization``
value in ``reference``, and each of its settings the reference code's value; the defaults are those
values, so an entry ``{}`` does what the paper's code does. The literature variants (Fisher EWC,
pure linear probing, LwF with T^2, LoRA at alpha 16, a zero-initialised prompt) are other
registered names or settings.

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
_SOUP = {**_INGREDIENTS, "default": ["ft", "lp_ft", "ewc", "lwf"],
         "description": "methods entries to average; 'pretrained' stands for the pretrained weights (the "
                        "reference's PRE: [pretrained, ft] is WiSE-FT at alpha 0.5)"}

# The name weight-space methods give the pretrained weights among their ingredients (the reference's PRE).
PRETRAINED_INGREDIENT = "pretrained"

# The paper's fine-tuning recipe in the reference code (FieteLab/ImageNet-RIB, main.py and its README
# command): what `rib methods` compares every entry's schedule with.
REFERENCE_SCHEDULE = {"optimizer": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0, "warmup_steps": 196,
                      "batch_size": 64, "epochs": 10, "precision": "fp16"}


@dataclass(frozen=True)
class MethodInfo:
    target: str                      # "module:Class"
    kind: str = "train"              # train | weights
    summary: str = ""
    # setting -> JSON Schema, with "default" and, where the reference code has the setting, "reference"
    # (its value there; rib methods shows both)
    options: dict = field(default_factory=dict)
    init_from: str | None = None     # setting naming the method entry whose checkpoint starts training
    ingredients_from: tuple[str, ...] = ()         # settings naming the entries a weight-space method combines
    accepts_pretrained: bool = False  # may name the pretrained weights among its ingredients
    needs_reference: bool = False    # reads pretraining-domain data (importance weights)
    plain_checkpoint: bool = True    # its checkpoint is a model of the pretrained architecture
    reference: str | None = None     # the reference code's --regularization value; None: not in the paper's code

    def defaults(self) -> dict:
        return {k: s["default"] for k, s in self.options.items() if "default" in s}


METHODS: dict[str, MethodInfo] = {
    "ft": MethodInfo("rib.methods.ft:FullFineTuning", summary="full fine-tuning", reference="FT"),
    "lp": MethodInfo(
        "rib.methods.lp:HeadOnly", reference="HeadOnly",
        summary="linear probing as the reference code does it: a ViT's patch embedding and blocks are frozen, the "
                "head, class token, position embedding and final norm train; a CNN trains its head only"),
    "linear_probe": MethodInfo(
        "rib.methods.lp:LinearProbing",
        summary="pure linear probing: the head only, on the frozen backbone's features (computed once)"),
    "lp_ft": MethodInfo(
        "rib.methods.ft:FullFineTuning", summary="LP-FT: full fine-tuning started from the finished LP checkpoint",
        options={"lp": {"type": "string", "minLength": 1, "default": "lp", "reference": "lp",
                        "description": "the methods entry (a linear probe) whose checkpoint starts fine-tuning"}},
        init_from="lp", reference="LPFT"),
    "lora": MethodInfo(
        "rib.methods.lora:LoRA", summary="low-rank adapters on the attention projections", reference="lora",
        options={"rank": {"type": "integer", "minimum": 1, "default": 8, "reference": 8},
                 "alpha": {"type": "number", "exclusiveMinimum": 0, "default": 1, "reference": 1,
                           "description": "the update is scaled by alpha / rank"},
                 "targets": {"type": "array", "minItems": 1, "uniqueItems": True,
                             "items": {"enum": ["q", "k", "v"]}, "default": ["q", "v"], "reference": ["q", "v"]},
                 "train_head": {"type": "boolean", "default": False, "reference": False},
                 "train_outside_blocks": {
                     "type": "boolean", "default": True, "reference": True,
                     "description": "also train every parameter outside the transformer blocks except the patch "
                                    "embedding and the head (class token, position embedding, norms)"}}),
    "visual_prompt": MethodInfo(
        "rib.methods.prompt:VisualPrompt", summary="a learned pad prompt around the image; the model is frozen",
        options={"width": {"type": "integer", "minimum": 1, "default": 30, "reference": 30,
                           "description": "pixels of the border the prompt covers"},
                 "init": {"enum": ["normal", "zeros"], "default": "normal", "reference": "normal",
                          "description": "the prompt's start: N(0, 1) in normalised-pixel space, or zero (the "
                                         "pretrained model)"}},
        plain_checkpoint=False, reference="Prompter"),
    "ewc": MethodInfo(
        "rib.methods.regularized:L2Pull", reference="ewc",
        summary="the reference code's \"EWC\": strength x the sum of squared distances to the pretrained weights "
                "(no Fisher information; L2-SP without the 1/2)",
        options={"strength": {**_STRENGTH, "default": 1.0, "reference": 1.0}}),
    "ewc_fisher": MethodInfo(
        "rib.methods.regularized:EWC",
        summary="elastic weight consolidation: a pull to the pretrained weights weighted by the diagonal Fisher",
        options={"strength": {**_STRENGTH, "default": 1000.0}, **_REFERENCE}, needs_reference=True),
    "l2sp": MethodInfo(
        "rib.methods.regularized:L2SP", summary="L2-SP: a uniform L2 pull to the pretrained weights",
        options={"strength": {**_STRENGTH, "default": 0.1}}),
    "lwf": MethodInfo(
        "rib.methods.lwf:LwF", summary="learning without forgetting: distillation to the pretrained model's logits",
        options={"temperature": {"type": "number", "exclusiveMinimum": 0, "default": 2.0, "reference": 2.0},
                 "strength": {**_STRENGTH, "default": 1.0, "reference": 1.0},
                 "temperature_squared": {"type": "boolean", "default": False, "reference": False,
                                         "description": "multiply the distillation term by T^2 (Hinton et al.)"}},
        reference="lwf"),
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
        options={"ingredients": _SOUP}, ingredients_from=("ingredients",), accepts_pretrained=True,
        reference="Soup-A-B-..."),
    "greedy_soup": MethodInfo(
        "rib.methods.weights:GreedySoup", kind="weights",
        summary="greedy soup: ingredients added best first while held-out D_ft accuracy does not drop",
        options={"ingredients": _SOUP}, ingredients_from=("ingredients",), accepts_pretrained=True),
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


def trained_ingredients(params: dict, entry: str) -> list[str]:
    """The ingredients of a weight-space entry that are checkpoints of training entries (all but the
    pretrained weights, which every combine job has anyway)."""
    return [n for n in ingredients(params, entry) if n != PRETRAINED_INGREDIENT]


def init_entry(params: dict, entry: str) -> str | None:
    """The entry whose checkpoint starts this entry's training (LP-FT's linear probe), if any."""
    key = entry_info(params, entry).init_from
    return entry_config(params, entry)[key] if key else None


def get_method(name: str, config: dict):
    """Instantiate the registered method ``name`` with its merged configuration."""
    module, cls = info(name).target.split(":")
    return getattr(importlib.import_module(module), cls)(config)
