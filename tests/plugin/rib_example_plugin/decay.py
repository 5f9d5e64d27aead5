"""Full fine-tuning with weight decay toward zero: an L2 penalty on the weights in the loss."""

from __future__ import annotations

from torch.nn import functional as F

from rib.methods.base import Method


class DecayToZero(Method):
    """Every parameter trains (as FT); the loss adds ``strength * sum(theta^2)`` over them."""

    name = "ft_decay"

    def __init__(self, config: dict):
        super().__init__(config)
        self.strength = float(config["strength"])

    def loss(self, module, inputs, logits, targets, ctx):
        penalty = sum(p.pow(2).sum() for p in module.parameters() if p.requires_grad)
        return F.cross_entropy(logits, targets) + self.strength * penalty
