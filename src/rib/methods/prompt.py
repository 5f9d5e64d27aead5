"""Visual prompting (Bahng et al., 2022): a learned pad prompt; the model itself is frozen.

The prompt is added to the normalised image on a frame of ``width`` pixels (the paper: 30 at
224 px) and starts at zero, so training starts at the pretrained model. The checkpoint keeps the
prompt around the unchanged model (a ``pad_prompt`` wrapper, see :mod:`rib.models.wrappers`).
"""

from __future__ import annotations

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
        return wrapped.to(ctx.device)

    def trainable_parameters(self, module: nn.Module) -> list[nn.Parameter]:
        return [module.pad_up, module.pad_down, module.pad_left, module.pad_right]

    def train_mode(self, module: nn.Module) -> None:
        module.eval()  # the frozen model keeps its normalisation statistics

    def finalize(self, module: nn.Module) -> tuple[nn.Module, dict | None]:
        return module, module.description()
