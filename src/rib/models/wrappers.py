"""Modules a method puts around a pretrained model and that its checkpoint keeps.

A checkpoint with a ``wrapper`` entry is rebuilt as ``WRAPPERS[kind](base model, **args)``; its
weights are the wrapper's state dict (the base model's under ``model.``).
"""

from __future__ import annotations

import torch
from torch import nn


class PadPrompter(nn.Module):
    """A learned additive prompt on a frame of ``width`` pixels around the (normalised) input image
    (Bahng et al., 2022). Pixels inside the frame are left exactly as they are."""

    kind = "pad_prompt"

    def __init__(self, model: nn.Module, width: int, image_size: int):
        super().__init__()
        if not 0 < 2 * width < image_size:
            raise ValueError(f"a pad prompt {width} pixels wide leaves no image inside a {image_size}-pixel input "
                             f"(use a width below {image_size / 2:g})")
        self.model = model
        self.width, self.image_size = width, image_size
        inner = image_size - 2 * width
        self.pad_up = nn.Parameter(torch.zeros(1, 3, width, image_size))
        self.pad_down = nn.Parameter(torch.zeros(1, 3, width, image_size))
        self.pad_left = nn.Parameter(torch.zeros(1, 3, inner, width))
        self.pad_right = nn.Parameter(torch.zeros(1, 3, inner, width))

    def prompt(self) -> torch.Tensor:
        inner = self.image_size - 2 * self.width
        middle = torch.cat([self.pad_left, self.pad_left.new_zeros(1, 3, inner, inner), self.pad_right], dim=3)
        return torch.cat([self.pad_up, middle, self.pad_down], dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.prompt().to(x.dtype))

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    @property
    def num_features(self) -> int:
        return self.model.num_features

    def description(self) -> dict:
        return {"kind": self.kind, "width": self.width, "image_size": self.image_size}


WRAPPERS = {PadPrompter.kind: PadPrompter}


def wrap(model: nn.Module, description: dict) -> nn.Module:
    args = {k: v for k, v in description.items() if k != "kind"}
    return WRAPPERS[description["kind"]](model, **args)
