"""Linear probing (LP): only the classification head is trained.

The backbone is frozen and kept in evaluation mode, so normalisation statistics do not move
either: the fine-tuned model differs from the pretrained one in the head alone.
"""

from torch import nn

from ..models.network import head
from .base import Method


class LinearProbing(Method):
    name = "lp"

    def prepare(self, model: nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head(model).parameters():
            p.requires_grad_(True)

    def train_mode(self, model: nn.Module) -> None:
        model.eval()
        head(model).train()
