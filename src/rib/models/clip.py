"""open_clip models as classifiers: the image tower with a zero-shot head.

The head is built the way CLIP classifies zero-shot: for each class, the text embeddings of its
real name in every prompt template ("a photo of a {}.", ...) are normalised, averaged and
normalised again; the classifier's logits are ``logit_scale * cos(image embedding, class
embedding)``. The head is an ordinary linear layer (its rows are ``logit_scale`` times the class
embeddings) on the normalised image embedding, so linear probing, fine-tuning and the dataset
projections treat it like any other head; fine-tuning starts from it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import RibError


class ZeroShotClassifier(nn.Module):
    def __init__(self, visual: nn.Module, head_weight: torch.Tensor):
        from .heads import Float32Linear

        super().__init__()
        self.visual = visual
        num_classes, dim = head_weight.shape
        self.head = Float32Linear(dim, num_classes, bias=False)  # logits in fp32 under autocast (rib.models.heads)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
        self.num_features = dim
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x).float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head


def imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


TEMPLATES = ("openai", "simple")


def imagenet_templates(kind: str = "openai") -> list:
    """The prompt templates of the zero-shot head: ``openai``, CLIP's 80 ImageNet templates (the
    default), or ``simple``, open_clip's 7 (a head over 1000 classes in a tenth of the text passes)."""
    from open_clip import zero_shot_metadata

    if kind not in TEMPLATES:
        raise RibError(f"zero-shot templates {kind!r}: expected one of {', '.join(TEMPLATES)}")
    return list(zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES if kind == "openai"
                else zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES)


@torch.inference_mode()
def zero_shot_head(model, tokenizer, classnames: Sequence[str], templates: Sequence, device="cpu") -> torch.Tensor:
    """(num classes, embedding dim): logit_scale x the normalised mean template embedding of each class."""
    from open_clip import build_zero_shot_classifier

    weights = build_zero_shot_classifier(model, tokenizer, classnames, templates, num_classes_per_batch=10,
                                         device=device, use_tqdm=True)  # (dim, classes), columns normalised
    return (model.logit_scale.exp() * weights.T).float().cpu()


def uses_quick_gelu(arch: str, pretrained: str | None) -> bool:
    """Do open_clip's weights ``arch``/``pretrained`` use QuickGELU (``x * sigmoid(1.702 x)``, OpenAI's
    CLIP activation) rather than GELU? open_clip's pretrained config of the tag says so (``quick_gelu``:
    OpenAI's weights, LAION-400M's, MetaCLIP's, ...), as does the config of a ``-quickgelu`` architecture.
    ``open_clip.create_model(arch, pretrained=tag)`` only warns about a tag of the other activation and
    builds the architecture's (GELU), so rib decides here and forces it; the decision depends on the
    names alone, so weights of that tag read from a local file get the same activation."""
    import open_clip

    tag = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    own = open_clip.get_model_config(arch) if ":" not in arch else None  # a built-in architecture's config
    return bool(tag.get("quick_gelu") or (own or {}).get("quick_gelu"))


def folder_quick_gelu(model_cfg: dict) -> bool:
    """Does an open_clip model folder's config ask for QuickGELU?"""
    return bool(model_cfg.get("quick_gelu"))


def _create(arch: str, pretrained: str | None = None, weights_file: str | None = None,
            quick_gelu: bool | None = None, model_cfg: dict | None = None):
    """``quick_gelu``: None decides from the tag (:func:`uses_quick_gelu`). ``arch`` may be an open_clip
    model folder (``local-dir:PATH``); ``model_cfg``, its config recorded in a checkpoint, builds the
    architecture without the folder (random weights, to load the checkpoint's into)."""
    import tempfile

    import open_clip

    if model_cfg is not None:
        with tempfile.TemporaryDirectory() as tmp:  # open_clip builds a config only from a file
            (Path(tmp) / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
            with _quiet_open_clip():
                return open_clip.create_model(f"local-dir:{tmp}", force_quick_gelu=bool(quick_gelu))
    if quick_gelu is None:
        quick_gelu = uses_quick_gelu(arch, pretrained)
    try:
        return open_clip.create_model(arch, pretrained=weights_file or pretrained, force_quick_gelu=quick_gelu)
    except Exception as err:  # hub, network, file and config errors come in many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        where = f"from {weights_file}" if weights_file else "(this needs internet: run it on a machine that has it)"
        raise RibError(f"open_clip:{arch}/{pretrained}: could not load weights {where}: {first}") from None


@contextmanager
def _quiet_open_clip():
    """open_clip logs a warning for a model built without weights: expected when a checkpoint is loaded."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def create(arch: str, num_classes: int, quick_gelu: bool = False, model_cfg: dict | None = None) -> ZeroShotClassifier:
    """The architecture with random weights and an empty head (to load a saved checkpoint into);
    ``quick_gelu`` as recorded in the checkpoint's ``arch_kwargs`` (see :func:`uses_quick_gelu`), and
    for a model from an open_clip folder its ``model_cfg``."""
    model = _create(arch, quick_gelu=quick_gelu, model_cfg=model_cfg)
    return ZeroShotClassifier(model.visual, torch.zeros(num_classes, model.visual.output_dim))


def preprocessing(model, arch: str | None = None, pretrained: str | None = None) -> dict:
    """open_clip's eval transform of ``model`` as a Preprocessing dict: ``model.visual.preprocess_cfg``
    (resize mode, interpolation, fill colour, mean, std: what create_model_and_transforms builds its
    preprocess_val from) at the tower's image size. With ``arch`` and a pretrained tag, the tag's
    config is laid over it, as open_clip does when it loads the tag itself (a model loaded from a
    weights file has only the defaults); the same config as registry.preprocessing_of's."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    from .registry import from_open_clip_config

    cfg = merge_preprocess_dict(PreprocessCfg(), getattr(model.visual, "preprocess_cfg", None) or {})
    if arch and pretrained:
        cfg = merge_preprocess_dict(cfg, open_clip.get_pretrained_cfg(arch.replace("/", "-"), pretrained) or {})
    cfg["size"] = model.visual.image_size
    return from_open_clip_config(cfg).as_dict()


def build(arch: str, pretrained: str | None, classnames: Sequence[str], templates: Sequence,
          weights_file: str | os.PathLike | None = None, device="cpu",
          quick_gelu: bool | None = None) -> tuple[ZeroShotClassifier, dict]:
    """Load an open_clip model and give it a zero-shot head over ``classnames``. The activation is
    the one the weights were trained with (``quick_gelu`` None: decided from ``arch`` and the tag
    ``pretrained``, also when the weights come from ``weights_file``; see :func:`uses_quick_gelu`)."""
    import open_clip

    model = _create(arch, pretrained, str(weights_file) if weights_file else None, quick_gelu).to(device).eval()
    head = zero_shot_head(model, open_clip.get_tokenizer(arch), classnames, templates, device=device)
    return ZeroShotClassifier(model.visual.cpu(), head), preprocessing(model, arch, pretrained)
