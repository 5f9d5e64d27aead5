"""The interface every training method implements.

The trainer (:func:`rib.train.fit`) drives a method through these hooks, in this order:

1. ``setup(model, ctx)``: freeze/unfreeze parameters, wrap or modify the model (adapters, a
   prompt); returns the module that is trained. The pretrained weights are still in place, so
   this is where anchors are taken.
2. On resume: the trained module's and the method's ``state_dict`` are restored.
3. ``start(module, ctx)``: compute whatever the resumed state did not bring (importance weights).
4. Each step: ``train_mode``, then ``loss(module, inputs, logits, targets, ctx)``; ``logits`` are
   already projected onto the dataset's classes, ``inputs`` are the normalised images.
5. ``finalize(module)``: the module to save (adapters merged) and the checkpoint's wrapper, if any.

A method that carries state (importance weights) returns it from ``state_dict`` so that a resumed
run continues with exactly the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import RibError


class MethodError(RibError):
    """A method was asked for something it cannot do (LoRA without attention, LP-FT without LP)."""


@dataclass
class TrainContext:
    """What a method may use besides the model: the run's device and seed, the dataset's label
    projection, and (for importance weights) a loader of pretraining-domain images."""

    device: torch.device
    seed: int
    projection: object = None
    prep: object = None
    reference: Callable[[], object] | None = None   # -> (uint8 images, labels) dataset
    normalize: Callable | None = None
    extras: dict = field(default_factory=dict)


def transformer_core(model: nn.Module) -> list[nn.Module] | None:
    """A vision transformer's patch embedding and its blocks (timm: ``patch_embed``, ``blocks``;
    open_clip: ``visual.conv1``, ``visual.transformer``), or None for a network without them (a CNN).

    The reference code's HeadOnly and LoRA draw their line here: what lies outside these modules and
    the head (class token, position embedding, the norms before and after the blocks) trains."""
    layouts = ((model, ("patch_embed", "blocks")), (getattr(model, "visual", None), ("conv1", "transformer")))
    for owner, parts in layouts:
        if owner is not None and all(isinstance(getattr(owner, p, None), nn.Module) for p in parts):
            return [getattr(owner, p) for p in parts]
    return None


def outside_core_parameters(model: nn.Module, head_module: nn.Module) -> list[nn.Parameter]:
    """The parameters of a transformer outside its patch embedding, blocks and head; none for a
    network without them (a CNN, or an attention pool on a CNN)."""
    core = transformer_core(model)
    if core is None:
        return []
    skip = {id(p) for m in [*core, head_module] for p in m.parameters()}
    return [p for p in model.parameters() if id(p) not in skip]


class Method:
    name = "method"

    def __init__(self, config: dict):
        self.config = dict(config)

    def setup(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def start(self, module: nn.Module, ctx: TrainContext) -> None:
        pass

    def trainable_parameters(self, module: nn.Module) -> list[nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    def train_mode(self, module: nn.Module) -> None:
        module.train()

    # True when only the head trains on a frozen backbone's features (fit computes them once).
    head_on_features = False

    def loss(self, module: nn.Module, inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
             ctx: TrainContext) -> torch.Tensor:
        return F.cross_entropy(logits, targets)

    def finalize(self, module: nn.Module) -> tuple[nn.Module, dict | None]:
        """The model to save, and its wrapper description (None for a plain model)."""
        return module, None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
