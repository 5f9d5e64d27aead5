"""Fine-tuning with a pull toward the pretrained weights: the reference code's "EWC", L2-SP, EWC and MAS.

All add ``factor * strength * sum_i w_i (theta_i - theta0_i)^2`` to the cross-entropy, over every
trained parameter, where theta0 are the pretrained weights:

* ``ewc`` as the paper's code has it (FieteLab/ImageNet-RIB, ``ewc_penalty``): ``w_i = 1``, factor
  1, strength 1: a plain L2 pull, no Fisher information.
* L2-SP (Li et al., 2018): ``w_i = 1``, factor 1/2 (``alpha / 2 * ||theta - theta0||^2``).
* EWC (Kirkpatrick et al., 2017), registered as ``ewc_fisher``: factor 1/2, ``w_i`` = the diagonal
  Fisher information of the pretrained model on pretraining-domain images,
  ``E_x E_{y ~ p(y|x)} [(d log p(y|x) / d theta_i)^2]``, with one label drawn from the model's own
  prediction per image (seeded), one image at a time.
* MAS (Aljundi et al., 2018): factor 1/2, ``w_i`` = the mean over pretraining-domain images of
  ``|d ||f(x)||^2 / d theta_i|``, the sensitivity of the squared norm of the logits.

The importance weights are computed once, at the start of training, and kept in the method's
state, so a resumed run uses the very same values.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from ..progress import progress
from .base import Method, MethodError, TrainContext

log = logging.getLogger("rib.methods")


class AnchoredPull(Method):
    uses_importance = False
    factor = 0.5  # of strength x the (weighted) squared distance

    def __init__(self, config: dict):
        super().__init__(config)
        self.strength = float(config["strength"])
        self.anchor: dict[str, torch.Tensor] = {}
        self.importance: dict[str, torch.Tensor] | None = None

    def setup(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        model = super().setup(model, ctx)
        self.anchor = {n: p.detach().clone().to(ctx.device) for n, p in model.named_parameters() if p.requires_grad}
        return model

    def penalty(self, module: nn.Module) -> torch.Tensor:
        total = None
        for name, p in module.named_parameters():
            if name not in self.anchor:
                continue
            sq = (p - self.anchor[name]).pow(2)
            if self.importance is not None:
                sq = sq * self.importance[name]
            term = sq.sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def loss(self, module, inputs, logits, targets, ctx):
        return F.cross_entropy(logits, targets) + self.factor * self.strength * self.penalty(module)

    def start(self, module: nn.Module, ctx: TrainContext) -> None:
        if not self.uses_importance or self.importance is not None:
            return
        if ctx.reference is None:
            raise MethodError(f"{self.config.get('entry', self.name)}: needs pretraining-domain images "
                              "(rib finetune --reference DIR)")
        data = ctx.reference(int(self.config["samples"]), ctx.seed)
        self.importance = self.estimate(module, data, ctx)
        flat = torch.cat([v.flatten() for v in self.importance.values()])
        log.info("%s: importance weights from %d images: mean %.3g, max %.3g", self.name, len(data),
                 float(flat.mean()), float(flat.max()))

    def per_sample_objective(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def accumulate(self, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def estimate(self, module: nn.Module, data, ctx: TrainContext) -> dict[str, torch.Tensor]:
        was_training = module.training
        module.eval()
        names = [n for n, p in module.named_parameters() if p.requires_grad]
        params = [p for n, p in module.named_parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        generator = torch.Generator().manual_seed(ctx.seed * 7919 + 17)
        for i in progress(range(len(data)), desc=f"{self.name} importance", unit="img", leave=False):
            x = ctx.normalize(data.images[i:i + 1], ctx.prep, ctx.device)
            objective = self.per_sample_objective(module(x).float(), generator)
            grads = torch.autograd.grad(objective, params)
            for acc, g in zip(total, grads):
                acc.add_(self.accumulate(g))
        module.train(was_training)
        return {n: t / len(data) for n, t in zip(names, total)}

    def state_dict(self) -> dict:
        return {"importance": self.importance} if self.importance is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if state.get("importance") is not None:
            self.importance = state["importance"]


class L2Pull(AnchoredPull):
    """The reference code's "EWC": ``strength * ||theta - theta0||^2``."""

    name = "ewc"
    factor = 1.0


class L2SP(AnchoredPull):
    name = "l2sp"


class EWC(AnchoredPull):
    name = "ewc_fisher"
    uses_importance = True

    def per_sample_objective(self, logits, generator):
        log_probs = F.log_softmax(logits, dim=-1)[0]
        y = torch.multinomial(log_probs.detach().exp().cpu(), 1, generator=generator).item()
        return -log_probs[y]

    def accumulate(self, grad):
        return grad.pow(2)


class MAS(AnchoredPull):
    name = "mas"
    uses_importance = True

    def per_sample_objective(self, logits, generator):
        return logits.pow(2).sum()

    def accumulate(self, grad):
        return grad.abs()
