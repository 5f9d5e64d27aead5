"""Visual prompting (Bahng et al., 2022): a learned pad prompt; the model itself is frozen.

The prompt is added to the normalised image on a frame of ``width`` pixels (the paper: 30 at
224 px). As in the reference code's PadPrompter, its four parts start from N(0, 1) in
normalised-pixel space (drawn from the run's seed), only the prompt is optimised and the model
stays in eval mode; ``init: zeros`` starts at the pretrained model instead. The checkpoint keeps
the prompt around the unchanged model (a ``pad_prompt`` wrapper, see :mod:`rib.models.wrappers`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.wrappers import PadPrompter
from .base import Method, MethodError, TrainContext


class VisualPrompt(Method):
    name = "visual_prompt"

    def setup(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            wrapped = PadPrompter(model, int(self.config["width"]), ctx.prep.input_size)
        except ValueError as err:
            raise MethodError(f"methods.{self.config.get('entry', self.name)}.width: {err}") from None
        if self.config.get("init", "normal") == "normal":
            generator = torch.Generator().manual_seed(ctx.seed * 1_000_037 + 53)
            with torch.no_grad():
                for p in self.trainable_parameters(wrapped):
                    p.copy_(torch.randn(p.shape, generator=generator))
        return wrapped.to(ctx.device)

    def trainable_parameters(self, module: nn.Module) -> list[nn.Parameter]:
        return [module.pad_up, module.pad_down, module.pad_left, module.pad_right]

    def train_mode(self, module: nn.Module) -> None:
        module.eval()  # the frozen model keeps its normalisation statistics

    def finalize(self, module: nn.Module) -> tuple[nn.Module, dict | None]:
        return module, module.description()
