"""The interface every fine-tuning method implements.

The trainer asks a method which parameters to optimise, how to put the model in training mode,
and what loss to minimise on a batch; methods that carry state (a Fisher estimate, a prompt)
expose it through ``state_dict`` so that resuming restores it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Method:
    name = "method"

    def __init__(self, config: dict):
        self.config = dict(config)

    def prepare(self, model: nn.Module) -> None:
        """Called once before training: freeze/unfreeze parameters, add modules."""
        for p in model.parameters():
            p.requires_grad_(True)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def loss(self, model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``logits`` are already projected onto the dataset's classes."""
        return F.cross_entropy(logits, targets)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
