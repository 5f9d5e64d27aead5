"""Learning without forgetting (LwF, Li & Hoiem 2016), as the paper uses it.

The loss adds to the cross-entropy a distillation term toward the frozen pretrained model:
``strength * KL(softmax(teacher / T) || softmax(student / T))``, both logits restricted to the
fine-tuning dataset's classes (the same projection as the task loss), averaged over the batch.
These are the reference code's settings (T = 2, strength 1, no T^2 factor);
``temperature_squared: true`` multiplies the term by T^2, which keeps the gradient scale
independent of the temperature (Hinton et al.). The teacher is a frozen copy of the model taken
before training starts, so a resumed run rebuilds the same teacher from the pretrained weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from .base import Method, TrainContext


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      squared: bool = False) -> torch.Tensor:
    """``KL(softmax(teacher/T) || softmax(student/T))`` averaged over the batch, times ``T^2`` when ``squared``."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  log_target=True, reduction="batchmean")
    return kl * (t * t) if squared else kl


class LwF(Method):
    name = "lwf"

    def __init__(self, config: dict):
        super().__init__(config)
        self.temperature = float(config["temperature"])
        self.strength = float(config["strength"])
        self.squared = bool(config.get("temperature_squared", False))
        self.teacher: nn.Module | None = None

    def setup(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        model = super().setup(model, ctx)
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        return model

    def loss(self, module, inputs, logits, targets, ctx):
        with torch.no_grad():
            teacher = ctx.projection.restrict(self.teacher(inputs)).float()
        return F.cross_entropy(logits, targets) + self.strength * distillation_loss(logits, teacher, self.temperature,
                                                                                   self.squared)
