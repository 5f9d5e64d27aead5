"""open_clip models as classifiers: the image tower with a zero-shot head.

The head is built the way CLIP classifies zero-shot: for each class, the text embeddings of its
real name in every prompt template ("a photo of a {}.", ...) are normalised, averaged and
normalised again; the classifier's logits are ``logit_scale * cos(image embedding, class
embedding)``. The head is an ordinary linear layer (its rows are ``logit_scale`` times the class
embeddings) on the normalised image embedding, so linear probing, fine-tuning and the dataset
projections treat it like any other head; fine-tuning starts from it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import RibError


class ZeroShotClassifier(nn.Module):
    def __init__(self, visual: nn.Module, head_weight: torch.Tensor):
        super().__init__()
        self.visual = visual
        num_classes, dim = head_weight.shape
        self.head = nn.Linear(dim, num_classes, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
        self.num_features = dim
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head


def imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def imagenet_templates() -> list:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


@torch.inference_mode()
def zero_shot_head(model, tokenizer, classnames: Sequence[str], templates: Sequence, device="cpu") -> torch.Tensor:
    """(num classes, embedding dim): logit_scale x the normalised mean template embedding of each class."""
    from open_clip import build_zero_shot_classifier

    weights = build_zero_shot_classifier(model, tokenizer, classnames, templates, num_classes_per_batch=10,
                                         device=device, use_tqdm=True)  # (dim, classes), columns normalised
    return (model.logit_scale.exp() * weights.T).float().cpu()


def _create(arch: str, pretrained: str | None = None, weights_file: str | None = None):
    import open_clip

    try:
        return open_clip.create_model(arch, pretrained=weights_file or pretrained)
    except Exception as err:  # hub, network, file and config errors come in many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        where = f"from {weights_file}" if weights_file else "(this needs internet: run it on a machine that has it)"
        raise RibError(f"open_clip:{arch}/{pretrained}: could not load weights {where}: {first}") from None


def create(arch: str, num_classes: int) -> ZeroShotClassifier:
    """The architecture with random weights and an empty head (to load a saved checkpoint into)."""
    model = _create(arch)
    return ZeroShotClassifier(model.visual, torch.zeros(num_classes, model.visual.output_dim))


def preprocessing(model) -> dict:
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    return {"input_size": int(size), "interpolation": cfg.get("interpolation", "bicubic"), "crop_pct": 1.0,
            "mean": [float(v) for v in getattr(model.visual, "image_mean", None) or cfg.get("mean")],
            "std": [float(v) for v in getattr(model.visual, "image_std", None) or cfg.get("std")]}


def build(arch: str, pretrained: str | None, classnames: Sequence[str], templates: Sequence,
          weights_file: str | os.PathLike | None = None, device="cpu") -> tuple[ZeroShotClassifier, dict]:
    """Load an open_clip model and give it a zero-shot head over ``classnames``."""
    import open_clip

    model = _create(arch, pretrained, str(weights_file) if weights_file else None).to(device).eval()
    head = zero_shot_head(model, open_clip.get_tokenizer(arch), classnames, templates, device=device)
    return ZeroShotClassifier(model.visual.cpu(), head), preprocessing(model)
