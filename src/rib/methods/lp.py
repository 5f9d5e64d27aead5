"""Linear probing, two ways.

* ``lp`` (the reference code's HeadOnly): a vision transformer's patch embedding and blocks are
  frozen; the head, the class token, the position embedding and the norms outside the blocks train,
  with the model in training mode as in the reference. A network without transformer blocks (a
  CNN) trains its head only.
* ``linear_probe``: only the classification head trains. The backbone is frozen and kept in
  evaluation mode, so normalisation statistics do not move either. Training uses the eval
  transform, so each image's pre-logit features are the same every epoch; they are computed once
  and the head is trained on them, an epoch costing a matrix product instead of a forward pass.
"""

from torch import nn

from ..models.network import head
from .base import Method, TrainContext, outside_core_parameters


class HeadOnly(Method):
    name = "lp"

    def setup(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        classifier = head(model)
        train = outside_core_parameters(model, classifier) + list(classifier.parameters())
        keep = {id(p) for p in train}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        return model


class LinearProbing(Method):
    name = "linear_probe"
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
