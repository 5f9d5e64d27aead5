"""The model registry: names -> architecture, preprocessing and where the weights come from.

Names follow timm's ``architecture.tag`` convention. In the ``rib-mini`` suite the architectures
are small timm networks (a narrow ResNet-18 and a 4-block ViT, sized for a CPU) and the tag names
the pretraining corpus the pipeline trains them on (``mini_resnet.narrow``, ``mini_vit.diverse``).
This module is data only (no torch), so configuration checks stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its images: the eval transform used for training and evaluation alike."""

    input_size: int
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def as_dict(self) -> dict:
        return {"input_size": self.input_size, "interpolation": self.interpolation, "crop_pct": self.crop_pct,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(int(d["input_size"]), d["interpolation"], float(d["crop_pct"]), tuple(d["mean"]), tuple(d["std"]))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str  # timm architecture
    arch_kwargs: dict = field(default_factory=dict)
    family: str = "cnn"  # cnn | vit
    # None: the model's own (timm's pretrained config), read when its weights are fetched
    preprocessing: Preprocessing | None = Preprocessing(224)
    # 'pretrain:<corpus>': trained by the pipeline on a corpus of the suite; 'timm:<name.tag>':
    # timm's pretrained weights, fetched once onto disk
    weights: str = ""
    description: str = ""

    @property
    def pretrain_corpus(self) -> str | None:
        return self.weights.split(":", 1)[1] if self.weights.startswith("pretrain:") else None

    @property
    def timm_weights(self) -> str | None:
        return self.weights.split(":", 1)[1] if self.weights.startswith("timm:") else None


@dataclass(frozen=True)
class MiniArch:
    timm_name: str
    family: str
    kwargs: dict
    description: str


MINI_ARCHS: dict[str, MiniArch] = {
    "mini_resnet": MiniArch(
        "resnet18", "cnn", {"channels": (16, 32, 64, 128), "stem_width": 16},
        "ResNet-18 layout at a quarter of the width (0.7M parameters)",
    ),
    "mini_vit": MiniArch(
        "vit_tiny_patch16_224", "vit",
        {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3, "global_pool": "avg", "class_token": False},
        "ViT with 8-pixel patches, width 96, 4 blocks, mean-pooled tokens (0.5M parameters)",
    ),
}


def _mini_models(params: dict) -> dict[str, ModelSpec]:
    from ..data.synthetic.suite import CORPORA

    size = params["synthetic"]["image_size"]
    specs = {}
    for arch_name, arch in MINI_ARCHS.items():
        kwargs = dict(arch.kwargs)
        if arch.family == "vit":
            kwargs["img_size"] = size
        for corpus in CORPORA:
            name = f"{arch_name}.{corpus}"
            specs[name] = ModelSpec(
                name=name, arch=arch.timm_name, arch_kwargs=kwargs, family=arch.family,
                preprocessing=Preprocessing(size), weights=f"pretrain:{corpus}",
                description=f"{arch.description}, pretrained from scratch on the {corpus} corpus",
            )
    return specs


# The pretrained models of the paper (ViT-B/16 with seven pretraining recipes), its ViT-B/32
# variants and ResNet-50, as timm names with pinned pretrained tags. All have ImageNet-1K heads.
PAPER_MODELS: dict[str, str] = {
    "vit_base_patch16_224.augreg_in1k": "ViT-B/16, IN-1K + AugReg",
    "vit_base_patch16_224.sam_in1k": "ViT-B/16, IN-1K + SAM",
    "vit_base_patch16_224.orig_in21k_ft_in1k": "ViT-B/16, IN-21K",
    "vit_base_patch16_224_miil.in21k_ft_in1k": "ViT-B/16, IN-21K-P",
    "vit_base_patch16_224.augreg_in21k_ft_in1k": "ViT-B/16, IN-21K + AugReg",
    "vit_base_patch16_clip_224.openai_ft_in1k": "ViT-B/16, OpenAI CLIP",
    "vit_base_patch16_clip_224.laion2b_ft_in1k": "ViT-B/16, LAION-2B CLIP",
    "vit_base_patch32_224.augreg_in1k": "ViT-B/32, IN-1K + AugReg",
    "vit_base_patch32_224.sam_in1k": "ViT-B/32, IN-1K + SAM",
    "vit_base_patch32_224.augreg_in21k_ft_in1k": "ViT-B/32, IN-21K + AugReg",
    "vit_base_patch32_clip_224.openai_ft_in1k": "ViT-B/32, OpenAI CLIP",
    "vit_base_patch32_clip_224.laion2b_ft_in1k": "ViT-B/32, LAION-2B CLIP",
    "resnet50.tv_in1k": "ResNet-50, torchvision weights",
    "resnet50.a1_in1k": "ResNet-50, timm A1 recipe",
}


def _paper_models() -> dict[str, ModelSpec]:
    return {name: ModelSpec(name=name, arch=name, family="cnn" if name.startswith("resnet") else "vit",
                            preprocessing=None, weights=f"timm:{name}", description=label)
            for name, label in PAPER_MODELS.items()}


def models_for(params: dict) -> dict[str, ModelSpec]:
    if params["suite"] == "rib-mini":
        return _mini_models(params)
    if params["suite"] == "imagenet-rib":
        return _paper_models()
    return {}


def model_names(params: dict) -> list[str]:
    return sorted(models_for(params))


def get_model(name: str, params: dict) -> ModelSpec:
    specs = models_for(params)
    if name not in specs:
        import difflib

        hint = difflib.get_close_matches(name, list(specs), n=3)
        tail = f"; did you mean {' or '.join(map(repr, hint))}?" if hint else f"; known: {', '.join(sorted(specs))}"
        from ..errors import UnknownNameError

        raise UnknownNameError(f"unknown model {name!r} for suite {params['suite']!r}{tail}")
    return specs[name]
