"""Linear probing (LP): only the classification head is trained.

The backbone is frozen and kept in evaluation mode, so normalisation statistics do not move
either: the fine-tuned model differs from the pretrained one in the head alone. Training uses the
eval transform, so each image's pre-logit features are the same every epoch; they are computed
once and the head is trained on them, an epoch costing a matrix product instead of a forward pass.
"""

from torch import nn

from ..models.network import head
from .base import Method, TrainContext


class LinearProbing(Method):
    name = "lp"
    # The frozen backbone in eval mode maps an image to the same features every epoch: the trainer
    # computes them once and trains the head on them (rib.train.fit).
    head_on_features = True

    def setup(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head(model).parameters():
            p.requires_grad_(True)
        return model

    def train_mode(self, module: nn.Module) -> None:
        module.eval()
        head(module).train()
