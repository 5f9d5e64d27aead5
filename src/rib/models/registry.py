"""The model registry: names -> architecture, preprocessing and where the weights come from.

Names follow timm's ``architecture.tag`` convention. In the ``rib-mini`` suite the architectures
are small timm networks (a narrow ResNet-18 and a 4-block ViT, sized for a CPU) and the tag names
the pretraining corpus the pipeline trains them on (``mini_resnet.narrow``, ``mini_vit.diverse``).
This module is data only (no torch), so configuration checks stay fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


# How the image is brought to input_size x input_size (the eval transforms of timm and open_clip):
#   center  resize the shorter side to floor(size / crop_pct), keeping the aspect ratio, then take the
#           central crop (timm's crop_mode 'center'; open_clip's resize_mode 'shortest')
#   squash  resize both sides to floor(size / crop_pct), ignoring the aspect ratio, then take the central
#           crop (timm's 'squash'; open_clip's 'squash', where crop_pct is 1)
#   border  resize the longer side to floor(size / crop_pct), keeping the aspect ratio, then pad with
#           ``fill`` to a square and take the central crop (timm's 'border', whose fill is the mean as
#           uint8; open_clip's 'longest', whose fill is its fill_color)
CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# The version of the rule that turns an image into a model's pixels (rib.data.loading): a part of
# every cache key, so caches decoded by an earlier rule are never read as this rule's.
# 1: PIL resize with a rounded longer side (unversioned keys, 224px-bicubic-crop0.875)
# 2: exactly timm's / open_clip's eval transform (torchvision's Resize and CenterCrop on PIL images)
PIXEL_RULE = 2


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its images: the eval transform used for training and evaluation alike.

    ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode`` and (for ``border``) ``fill``
    decide the uint8 pixels (:func:`prep_key`); ``mean`` and ``std`` are applied per batch later."""

    input_size: int
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop_mode: str = "center"  # center | squash | border (see CROP_MODES above)
    fill: tuple[int, int, int] = (0, 0, 0)  # the padding colour of 'border' (only there; else (0, 0, 0))

    def __post_init__(self):
        if not (self.input_size > 0 and self.crop_pct > 0):
            raise ValueError(f"input size {self.input_size}, crop fraction {self.crop_pct}: expected both > 0")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop mode {self.crop_mode!r}: expected one of {', '.join(CROP_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}")
        fill = tuple(int(v) for v in self.fill) if self.crop_mode == "border" else (0, 0, 0)
        if len(fill) != 3 or not all(0 <= v <= 255 for v in fill):
            raise ValueError(f"fill {self.fill!r}: expected three values in 0..255")
        object.__setattr__(self, "fill", fill)

    def as_dict(self) -> dict:
        return {"input_size": self.input_size, "interpolation": self.interpolation, "crop_pct": self.crop_pct,
                "mean": list(self.mean), "std": list(self.std), "crop_mode": self.crop_mode,
                "fill": list(self.fill)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """The inverse of :meth:`as_dict`; dicts of older checkpoints (no crop_mode, fill) are 'center'."""
        return cls(int(d["input_size"]), d["interpolation"], float(d["crop_pct"]), tuple(d["mean"]), tuple(d["std"]),
                   d.get("crop_mode", "center"), tuple(d.get("fill", (0, 0, 0))))


def from_timm_config(cfg: dict) -> Preprocessing:
    """A timm data config (``resolve_data_config``'s, with its defaults for missing keys) as what
    ``transforms_imagenet_eval`` does with it."""
    size = cfg.get("input_size") or (3, 224, 224)
    if size[-1] != size[-2]:
        raise ValueError(f"input size {tuple(size)}: only square inputs are supported")
    mean = tuple(float(v) for v in cfg.get("mean") or (0.485, 0.456, 0.406))
    mode = cfg.get("crop_mode") or "center"
    interpolation = str(cfg.get("interpolation") or "bicubic")
    return Preprocessing(int(size[-1]), interpolation, float(cfg.get("crop_pct") or 0.875), mean,
                         tuple(float(v) for v in cfg.get("std") or (0.229, 0.224, 0.225)), mode,
                         tuple(round(255 * v) for v in mean) if mode == "border" else (0, 0, 0))


# open_clip's eval resize modes as crop modes (image_transform, is_train=False)
OPEN_CLIP_MODES = {"shortest": "center", "squash": "squash", "longest": "border"}


def from_open_clip_config(cfg: dict) -> Preprocessing:
    """An open_clip preprocess config (``model.visual.preprocess_cfg``, or a pretrained tag's config
    with the model's image size as ``size``) as what ``open_clip.image_transform(is_train=False)`` does
    with it: no crop_pct (1), interpolation bilinear or else bicubic, fill_color for 'longest'."""
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if size[0] != size[-1]:
            raise ValueError(f"image size {tuple(size)}: only square inputs are supported")
        size = size[0]
    resize_mode = cfg.get("resize_mode") or "shortest"
    if resize_mode not in OPEN_CLIP_MODES:
        raise ValueError(f"open_clip resize mode {resize_mode!r}: expected one of {', '.join(OPEN_CLIP_MODES)}")
    mode = OPEN_CLIP_MODES[resize_mode]
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"  # as image_transform
    mean = cfg.get("mean") or (0.48145466, 0.4578275, 0.40821073)
    std = cfg.get("std") or (0.26862954, 0.26130258, 0.27577711)
    mean = tuple(float(v) for v in (mean if isinstance(mean, (tuple, list)) else (mean,) * 3))
    std = tuple(float(v) for v in (std if isinstance(std, (tuple, list)) else (std,) * 3))
    fill = cfg.get("fill_color") or 0
    fill = tuple(int(v) for v in (fill if isinstance(fill, (tuple, list)) else (fill,) * 3))
    return Preprocessing(int(size), interpolation, 1.0, mean, std, mode, fill if mode == "border" else (0, 0, 0))


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
    # A local file of weights for an open_clip model (local_models: {arch: open_clip:ARCH/TAG, weights: FILE});
    # the tag still decides the activation and the preprocessing
    weights_file: str | None = None
    # The prompt templates of an open_clip model's zero-shot head: openai (CLIP's 80) or simple (7)
    templates: str = "openai"

    @property
    def source(self) -> str:
        return self.weights.split(":", 1)[0]

    @property
    def open_clip_folder(self) -> str | None:
        """The open_clip model folder the weights come from (local_models ``arch: open_clip``), if any."""
        rest = self.weights.split(":", 1)[1] if self.source == "open_clip" else ""
        return rest[len(LOCAL_DIR):] if rest.startswith(LOCAL_DIR) else None

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
    """``local_models``: a timm architecture with a weights file, or an open_clip ``open_clip:ARCH/TAG``
    whose weights (of that tag's recipe: activation, preprocessing) come from a file."""
    from dataclasses import replace

    specs = {}
    for name, entry in (params.get("local_models") or {}).items():
        arch, path = entry["arch"], entry["weights"]
        description = f"{arch} with weights from {path}"
        templates = {"templates": entry["templates"]} if "templates" in entry else {}
        if arch == "open_clip":  # an open_clip model folder: its own config, preprocessing and weights
            folder = os.path.abspath(path)
            specs[name] = ModelSpec(name=name, arch=f"open_clip:{LOCAL_DIR}{folder}", preprocessing=None,
                                    family="cnn" if _folder_is_resnet(folder) else "vit",
                                    weights=f"open_clip:{LOCAL_DIR}{folder}",
                                    description=f"open_clip model from the folder {path}, with a zero-shot head",
                                    **templates)
        elif arch.startswith("open_clip:"):
            specs[name] = replace(_prefixed(arch, params), name=name, weights_file=path, description=description,
                                  **templates)
        else:
            specs[name] = ModelSpec(name=name, arch=arch, family="cnn" if "resnet" in arch else "vit",
                                    preprocessing=None, weights=f"file:{path}", description=description)
    return specs


LOCAL_DIR = "local-dir:"  # open_clip's name for a model folder (open_clip_config.json and weights)


def open_clip_folder_config(folder: str) -> dict:
    """The ``open_clip_config.json`` of an open_clip model folder (``model_cfg``, ``preprocess_cfg``)."""
    from ..errors import MissingFileError

    path = Path(folder) / "open_clip_config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingFileError(f"{path}: not found (an open_clip model folder holds open_clip_config.json "
                               "and the weights)") from None
    except json.JSONDecodeError as err:
        raise MissingFileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise MissingFileError(f"{path}: no model_cfg in it (not an open_clip model config)")
    return config


def _folder_is_resnet(folder: str) -> bool:
    try:
        vision = open_clip_folder_config(folder)["model_cfg"].get("vision_cfg", {})
    except Exception:  # reported when the model is used
        return False
    return isinstance(vision.get("layers"), (list, tuple))


def models_for(params: dict) -> dict[str, ModelSpec]:
    """The named models of the configuration's suite, the plugins' included (prefixed names are
    resolved by get_model)."""
    from .. import plugins

    if params["suite"] == "rib-mini":
        specs = _mini_models(params)
    elif params["suite"] == "imagenet-rib":
        specs = {**_paper_models(), **_local_models(params)}
    else:
        specs = {}
    return {**specs, **plugins.models(params)}


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
    """The part of a preprocessing that decides the pixels, as a folder name (the image caches are
    named by it, rib.data.cache): the pixel rule's version, then size, interpolation, crop fraction and
    crop mode, e.g. ``v2-224px-bicubic-crop0.9-center``; 'border' adds its fill colour
    (``v2-224px-bicubic-crop1-border-fill0-0-0``). Keys of version 1 (``224px-bicubic-crop0.9``)
    named caches decoded by an earlier rule, which are not used."""
    crop = repr(float(prep.crop_pct)).removesuffix(".0")  # the shortest exact form: 1, 0.875, 0.9
    key = f"v{PIXEL_RULE}-{prep.input_size}px-{prep.interpolation}-crop{crop}-{prep.crop_mode}"
    return key + ("-fill{}-{}-{}".format(*prep.fill) if prep.crop_mode == "border" else "")


def preprocessing_of(spec: ModelSpec) -> Preprocessing:
    """The preprocessing a model's checkpoint will carry, known before its weights are fetched (the
    pipeline names the image caches by it). rib-mini: the registry's; timm: the pretrained config
    timm ships (as ``resolve_data_config`` reads it); open_clip: the model config's image size and
    the pretrained tag's preprocess config (resize mode, interpolation, mean, std), as
    ``open_clip.create_model_and_transforms`` resolves them."""
    if spec.preprocessing is not None:
        return spec.preprocessing
    if spec.source == "open_clip":
        import open_clip

        if spec.open_clip_folder:  # the folder's own preprocess config at its image size
            return from_open_clip_config(folder_preprocess_cfg(open_clip_folder_config(spec.open_clip_folder)))
        arch, _, tag = spec.weights.split(":", 1)[1].partition("/")
        return from_open_clip_config(open_clip_preprocess_cfg(arch, tag))
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.arch) or timm.models.get_pretrained_cfg(spec.arch.split(".")[0])
    if cfg is None:
        return Preprocessing(224, "bicubic", 0.875)
    from timm.data import resolve_data_config

    return from_timm_config(resolve_data_config({}, pretrained_cfg=cfg.to_dict()))


def _merged_preprocess_cfg(overlay: dict | None, model_cfg: dict | None) -> dict:
    """open_clip's PreprocessCfg defaults with ``overlay`` over them (a tag's or a folder's config), at
    the image size of ``model_cfg``'s vision tower, as create_model merges them."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(PreprocessCfg(), overlay or {})
    size = ((model_cfg or {}).get("vision_cfg") or {}).get("image_size")
    if size is not None:
        cfg["size"] = size
    return cfg


def folder_preprocess_cfg(config: dict) -> dict:
    """An open_clip model folder's preprocess config (its ``open_clip_config.json``)."""
    return _merged_preprocess_cfg(config.get("preprocess_cfg"), config["model_cfg"])


def open_clip_preprocess_cfg(arch: str, tag: str | None) -> dict:
    """open_clip's preprocess config of ``arch`` loaded with the pretrained ``tag``, as its
    create_model builds it: PreprocessCfg's defaults, the tag's config over them, the model's image
    size (imports open_clip)."""
    import open_clip

    name = arch.replace("/", "-")
    return _merged_preprocess_cfg(open_clip.get_pretrained_cfg(name, tag) if tag else None,
                                  open_clip.get_model_config(name))


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
    elif spec.open_clip_folder:
        open_clip_folder_config(spec.open_clip_folder)  # its config is there and readable
    elif spec.weights.startswith("open_clip:"):
        import open_clip

        arch, _, tag = spec.weights.split(":", 1)[1].partition("/")
        pairs = [f"{a}/{t}" for a, t in open_clip.list_pretrained()]
        if f"{arch}/{tag}" not in pairs:
            import difflib

            hint = difflib.get_close_matches(f"{arch}/{tag}", pairs, n=3)
            tail = f"; did you mean {' or '.join('open_clip:' + h for h in hint)}?" if hint else ""
            raise UnknownNameError(f"model {spec.name!r}: open_clip has no pretrained {arch}/{tag}{tail}")
