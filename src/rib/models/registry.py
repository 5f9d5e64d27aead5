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
    # Where the weights come from:
    #   'pretrain:<corpus>'      trained by the pipeline on a corpus of the suite (rib-mini)
    #   'timm:<name.tag>'        timm's pretrained weights, fetched once onto disk
    #   'open_clip:<arch>/<tag>' an open_clip model, given a zero-shot head
    #   'file:<path>'            a weights file of the timm architecture ``arch``
    weights: str = ""
    description: str = ""

    @property
    def source(self) -> str:
        return self.weights.split(":", 1)[0]

    @property
    def pretrain_corpus(self) -> str | None:
        return self.weights.split(":", 1)[1] if self.source == "pretrain" else None

    @property
    def slug(self) -> str:
        return model_slug(self.name)


def model_slug(name: str) -> str:
    """A model's name as a path component (and DVC-safe): ``timm:X`` -> ``timm--X``,
    ``open_clip:A/P`` -> ``open_clip--A--P``; registry names are unchanged."""
    return name.replace(":", "--", 1).replace("/", "--")


def canonical_name(name: str) -> str:
    """The inverse of :func:`model_slug` (a name already canonical is returned as is)."""
    if name.startswith("timm--"):
        return "timm:" + name[len("timm--"):]
    if name.startswith("open_clip--"):
        arch, _, tag = name[len("open_clip--"):].partition("--")
        return f"open_clip:{arch}/{tag}"
    return name


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


def _local_models(params: dict) -> dict[str, ModelSpec]:
    return {name: ModelSpec(name=name, arch=entry["arch"], family="cnn" if "resnet" in entry["arch"] else "vit",
                            preprocessing=None, weights=f"file:{entry['weights']}",
                            description=f"{entry['arch']} with weights from {entry['weights']}")
            for name, entry in (params.get("local_models") or {}).items()}


def models_for(params: dict) -> dict[str, ModelSpec]:
    """The named models of the configuration's suite (prefixed names are resolved by get_model)."""
    if params["suite"] == "rib-mini":
        return _mini_models(params)
    if params["suite"] == "imagenet-rib":
        return {**_paper_models(), **_local_models(params)}
    return {}


def model_names(params: dict) -> list[str]:
    return sorted(models_for(params))


PREFIXES = ("timm:", "open_clip:")


def _prefixed(name: str, params: dict) -> ModelSpec:
    from ..errors import UnknownNameError

    if params["suite"] != "imagenet-rib":
        raise UnknownNameError(f"model {name!r}: timm: and open_clip: models need a suite with the ImageNet-1K "
                               f"label space (imagenet-rib), not {params['suite']!r}")
    kind, _, rest = name.partition(":")
    if kind == "timm":
        if not rest or " " in rest:
            raise UnknownNameError(f"model {name!r}: expected timm:NAME.TAG, e.g. timm:vit_small_patch16_224.augreg_in21k")
        return ModelSpec(name=name, arch=rest, family="cnn" if "resnet" in rest else "vit", preprocessing=None,
                         weights=name, description=f"timm model {rest}")
    arch, _, tag = rest.partition("/")
    if not arch or not tag:
        raise UnknownNameError(f"model {name!r}: expected open_clip:ARCH/PRETRAINED, e.g. open_clip:ViT-B-32/openai")
    return ModelSpec(name=name, arch=f"open_clip:{arch}", family="cnn" if arch.startswith("RN") else "vit",
                     preprocessing=None, weights=name, description=f"open_clip {arch} ({tag}) with a zero-shot head")


def prep_key(prep: Preprocessing) -> str:
    """The part of a preprocessing that decides the pixels, as a folder name: 224px-bicubic-crop0.9
    (the image caches are named by it, rib.data.cache)."""
    return f"{prep.input_size}px-{prep.interpolation}-crop{prep.crop_pct:g}"


def preprocessing_of(spec: ModelSpec) -> Preprocessing:
    """The preprocessing a model's checkpoint will carry, known before its weights are fetched (the
    pipeline names the image caches by it). rib-mini: the registry's; timm: the pretrained config
    timm ships; open_clip: its model config (bicubic resize of the shorter side, centre crop)."""
    if spec.preprocessing is not None:
        return spec.preprocessing
    if spec.source == "open_clip":
        import open_clip

        arch = spec.arch.split(":", 1)[1]
        cfg = open_clip.get_model_config(arch) or {}
        size = cfg.get("vision_cfg", {}).get("image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        return Preprocessing(int(size), "bicubic", 1.0)
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.arch) or timm.models.get_pretrained_cfg(spec.arch.split(".")[0])
    if cfg is None:
        return Preprocessing(224, "bicubic", 0.875)
    return Preprocessing(int(cfg.input_size[-1]), str(cfg.interpolation), float(cfg.crop_pct),
                         tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std))


def get_model(name: str, params: dict) -> ModelSpec:
    name = canonical_name(name)
    if name.startswith(PREFIXES):
        return _prefixed(name, params)
    specs = models_for(params)
    if name not in specs:
        import difflib

        hint = difflib.get_close_matches(name, list(specs), n=3)
        tail = f"; did you mean {' or '.join(map(repr, hint))}?" if hint else f"; known: {', '.join(sorted(specs))}"
        from ..errors import UnknownNameError

        raise UnknownNameError(f"unknown model {name!r} for suite {params['suite']!r}{tail}")
    return specs[name]


def check_available(spec: ModelSpec) -> None:
    """For timm: and open_clip: models, check that the library knows the name (imports it; slow)."""
    from ..errors import UnknownNameError

    if spec.weights.startswith("timm:"):
        import timm

        known = timm.list_pretrained()
        if spec.arch not in known:
            import difflib

            hint = difflib.get_close_matches(spec.arch, known, n=3)
            tail = f"; did you mean {' or '.join('timm:' + h for h in hint)}?" if hint else ""
            raise UnknownNameError(f"model {spec.name!r}: timm has no pretrained model {spec.arch!r}{tail}")
    elif spec.weights.startswith("open_clip:"):
        import open_clip

        arch, _, tag = spec.weights.split(":", 1)[1].partition("/")
        pairs = [f"{a}/{t}" for a, t in open_clip.list_pretrained()]
        if f"{arch}/{tag}" not in pairs:
            import difflib

            hint = difflib.get_close_matches(f"{arch}/{tag}", pairs, n=3)
            tail = f"; did you mean {' or '.join('open_clip:' + h for h in hint)}?" if hint else ""
            raise UnknownNameError(f"model {spec.name!r}: open_clip has no pretrained {arch}/{tag}{tail}")
