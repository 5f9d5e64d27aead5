"""Linear probing (LP): only the classification head is trained.

The backbone is frozen and kept in evaluation mode, so normalisation statistics do not move
either: the fine-tuned model differs from the pretrained one in the head alone.
"""

from torch import nn

from ..models.network import head
from .base import Method, TrainContext


class LinearProbing(Method):
    name = "lp"

    def setup(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head(model).parameters():
            p.requires_grad_(True)
        return model

    def train_mode(self, module: nn.Module) -> None:
        module.eval()
        head(module).train()
