"""Projecting a model's label-space logits onto a dataset's classes.

Every dataset knows its classes as lists of label-space ids (a 200-class subset for ImageNet-A/R,
one-or-more ImageNet classes per ObjectNet class, ...). A dataset class's logit is the maximum of
the logits of its label-space classes. Training and evaluation both go through this projection,
so no trainer code ever special-cases a dataset.

Scoring ``restricted`` takes the argmax over the projected logits (the datasets' authors'
convention); ``full`` takes the argmax over the whole label space and counts it correct when it
falls in the true class's label-space ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .suites import DatasetClass


class LabelProjection:
    def __init__(self, classes: Sequence[DatasetClass], label_space: Sequence[str]):
        position = {w: i for i, w in enumerate(label_space)}
        targets = []
        for c in classes:
            unknown = [w for w in c.wnids if w not in position]
            if unknown:
                raise ValueError(f"class {c.folder!r} maps to {unknown[0]!r}, which is not in the model's label space")
            targets.append([position[w] for w in c.wnids])
        width = max(len(t) for t in targets)
        # Pad each row by repeating its first target: the max is unchanged.
        self.index = torch.tensor([t + [t[0]] * (width - len(t)) for t in targets], dtype=torch.long)
        self.member = torch.zeros(len(classes), len(label_space), dtype=torch.bool)
        for row, t in enumerate(targets):
            self.member[row, t] = True
        self.num_classes = len(classes)
        self.identity = width == 1 and self.index[:, 0].tolist() == list(range(len(label_space)))

    def to(self, device) -> LabelProjection:
        self.index = self.index.to(device)
        self.member = self.member.to(device)
        return self

    def restrict(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, label space) -> (B, dataset classes)."""
        if self.identity:
            return logits
        if self.index.shape[1] == 1:
            return logits[:, self.index[:, 0]]
        return logits[:, self.index].amax(dim=-1)

    def correct(self, logits: torch.Tensor, labels: torch.Tensor, scoring: str = "restricted") -> torch.Tensor:
        if scoring == "restricted":
            return self.restrict(logits).argmax(dim=1) == labels
        if scoring == "full":
            return self.member[labels, logits.argmax(dim=1)]
        raise ValueError(f"unknown scoring {scoring!r}; expected 'restricted' or 'full'")
