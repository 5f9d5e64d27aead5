"""Building networks from the registry and saving/loading rib checkpoints.

A rib checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``) that carries
everything needed to rebuild and use the model: the timm architecture and its arguments, the
label space of the head, the preprocessing, the weights and a ``meta`` record of how it was made.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import DamagedFileError, FormatError, MissingFileError, RibError, out_of_memory
from ..io import atomic_path, tree_digest, write_error
from .heads import float32_heads
from .registry import LOCAL_DIR, ModelSpec, Preprocessing, from_timm_config

FORMAT = "rib.checkpoint/1"
DIGEST = "sha256"  # of everything else in the checkpoint, recorded when it is written

log = logging.getLogger("rib")


def create(arch: str, arch_kwargs: dict, num_classes: int) -> nn.Module:
    """The architecture with random weights: a timm name, or ``open_clip:ARCH`` (image tower + head;
    ``arch_kwargs``: ``quick_gelu``, the activation its weights were fetched with).

    Its classification head computes in float32, under bf16 autocast too (:mod:`rib.models.heads`):
    the logits are not rounded to bf16. The head keeps its state-dict keys."""
    if arch.startswith("open_clip:"):
        from . import clip

        model = clip.create(arch.split(":", 1)[1], num_classes, **arch_kwargs)
    else:
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **arch_kwargs)
    return float32_heads(model)


def build(spec: ModelSpec, num_classes: int) -> nn.Module:
    return create(spec.arch, spec.arch_kwargs, num_classes)


def head(model: nn.Module) -> nn.Module:
    """The classification head (timm's ``get_classifier``)."""
    return model.get_classifier()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def feature_dim(model: nn.Module) -> int:
    return int(model.num_features)


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the classification head reads (timm's ``pre_logits``; CLIP's normalised embedding)."""
    features = model.forward_features(x)
    if hasattr(model, "forward_head"):
        return model.forward_head(features, pre_logits=True)
    return features


@dataclass
class Checkpoint:
    model: nn.Module
    name: str
    arch: str
    arch_kwargs: dict
    label_space: list[str]
    preprocessing: Preprocessing
    meta: dict
    wrapper: dict | None = None


def save(path: str | os.PathLike, model: nn.Module, *, name: str, arch: str, arch_kwargs: dict,
         label_space: list[str], preprocessing: Preprocessing, meta: dict, wrapper: dict | None = None) -> None:
    """``wrapper``: the description of a module around the architecture (see :mod:`rib.models.wrappers`)."""
    payload = {
        "format": FORMAT,
        "name": name,
        "arch": arch,
        "arch_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in arch_kwargs.items()},
        "label_space": list(label_space),
        "preprocessing": preprocessing.as_dict(),
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if wrapper is not None:
        payload["wrapper"] = wrapper
    write_torch(path, payload, what="checkpoint")


def write_torch(path: str | os.PathLike, payload: dict, what: str) -> None:
    """``torch.save`` of ``payload`` and its digest (:data:`DIGEST`) through a temporary file; a
    failed write (a full disk) is one clear error and leaves the previous file at ``path`` as it was."""
    payload = {**payload, DIGEST: tree_digest(payload)}
    try:
        with atomic_path(path, what) as tmp:
            torch.save(payload, tmp)
    except RuntimeError as err:  # torch's zip writer reports a full disk as a RuntimeError
        raise write_error(path, what, err) from None


DAMAGE_SIGNS = ("failed finding central directory", "failed reading zip archive", "invalid header or archive is "
                "corrupted", "unexpected EOF", "truncated", "CRC")


def digest_matches(payload: dict) -> bool:
    """Take the recorded digest out of a loaded ``payload`` and check it against the rest (files
    written before digests were recorded have none and pass)."""
    recorded = payload.pop(DIGEST, None)
    return recorded is None or tree_digest(payload) == recorded


def looks_damaged(err: Exception) -> bool:
    """Does an error of ``torch.load`` say the file's bytes are cut short or garbled (as opposed to an
    I/O error, a permission, or a file written by another version)?"""
    import pickle
    import zipfile

    text = str(err)
    if isinstance(err, OSError):
        return False
    if isinstance(err, (EOFError, zipfile.BadZipFile)):
        return True
    if isinstance(err, pickle.UnpicklingError):
        return "Weights only load failed" not in text
    return any(sign in text for sign in DAMAGE_SIGNS) and "file read failed" not in text


def load(path: str | os.PathLike, map_location="cpu") -> Checkpoint:
    path = Path(path)
    if not path.exists():
        hint = ""
        if path.name == "pretrained.pt" and len(path.parts) >= 3 and path.parts[-4:-3] == ("models",):
            from .registry import canonical_name

            hint = (f"; fetch it on a machine with internet: rib models fetch {canonical_name(path.parent.name)} "
                    "(or `rib pretrain` for a rib-mini model)")
        raise MissingFileError(f"{path}: checkpoint not found{hint}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if out_of_memory(err):
            raise  # not the file's fault: reported as running out of memory
        first = (str(err).strip().splitlines() or [""])[0]
        if not looks_damaged(err):  # an I/O error, a file of another torch version, not a checkpoint at all
            raise FormatError(f"{path}: not a readable rib checkpoint ({type(err).__name__}: {first})") from None
        raise DamagedFileError(f"{path}: not a readable rib checkpoint, truncated or damaged "
                               f"({type(err).__name__}: {first})", path) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FormatError(f"{path}: not a rib checkpoint (expected format {FORMAT})")
    if not digest_matches(payload):
        raise DamagedFileError(f"{path}: checkpoint does not match the digest recorded when it was written "
                               "(altered or damaged)", path)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in payload["arch_kwargs"].items()}
    if payload["arch"].startswith("open_clip:") and "quick_gelu" not in kwargs:
        _note_unrecorded_activation(path, payload["meta"])
    model = create(payload["arch"], kwargs, len(payload["label_space"]))
    if payload.get("wrapper"):
        from .wrappers import wrap

        model = wrap(model, payload["wrapper"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise FormatError(f"{path}: weights do not fit architecture {payload['arch']} ({first})") from None
    return Checkpoint(model, payload["name"], payload["arch"], kwargs, payload["label_space"],
                      Preprocessing.from_dict(payload["preprocessing"]), payload["meta"], payload.get("wrapper"))


def _note_unrecorded_activation(path: Path, meta: dict) -> None:
    """An open_clip checkpoint fetched before rib recorded the activation was built with GELU (and
    loads so, as it was made and trained); say so when its weights were trained with QuickGELU."""
    from . import clip

    weights = str(meta.get("weights", ""))
    arch, _, tag = weights.partition(":")[2].partition("/")
    if weights.startswith("open_clip:") and clip.uses_quick_gelu(arch, tag):
        log.warning("%s: built with GELU, but the weights %s were trained with QuickGELU (a checkpoint fetched "
                    "before rib used the weights' own activation); fetch it again: rib models fetch %s", path,
                    weights, weights)


def _load_error(name: str, err: Exception, weights_file) -> RibError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    where = f"from {weights_file}" if weights_file else "(this needs internet: run it on a machine that has it)"
    return RibError(f"{name}: could not load pretrained weights {where}: {first}")


def fetch_timm(name: str, arch: str, out: str | os.PathLike, label_space: list[str],
               weights_file: str | os.PathLike | None = None, arch_kwargs: dict | None = None,
               preprocessing: Preprocessing | None = None) -> None:
    """Save timm's pretrained ``arch`` as the rib checkpoint ``name``, with the model's own preprocessing.

    The weights come from timm's download (the Hugging Face hub; needs internet) or, with
    ``weights_file``, from a local file of weights for that architecture. ``arch_kwargs`` resize the
    architecture (a plugin's model: its head then has the label space's classes); ``preprocessing``
    replaces timm's (a model for the 32-pixel images of rib-mini).
    """
    import timm
    from timm.data import resolve_data_config

    arch_kwargs = dict(arch_kwargs or {})
    overlay = {"pretrained_cfg_overlay": {"file": str(weights_file)}} if weights_file else {}
    if arch_kwargs and weights_file:  # a resized architecture has no published head: the file's is the suite's
        overlay["pretrained_cfg_overlay"]["num_classes"] = len(label_space)
    try:
        model = timm.create_model(arch, pretrained=True, **overlay, **arch_kwargs)
    except Exception as err:  # hub, network, file and shape errors come in many types
        raise _load_error(name, err, weights_file) from None
    if model.num_classes != len(label_space):
        raise RibError(f"{name}: its head has {model.num_classes} classes, the suite's label space {len(label_space)}")
    cfg = resolve_data_config({}, model=model)
    prep = preprocessing or from_timm_config(cfg)  # size, interpolation, crop_pct, crop_mode, mean, std
    save(out, model, name=name, arch=arch, arch_kwargs=arch_kwargs, label_space=label_space, preprocessing=prep,
         meta={"kind": "pretrained", "weights": f"timm:{arch}", "weights_file": str(weights_file or ""),
               "parameters": count_parameters(model), "feature_dim": feature_dim(model)})


def fetch_open_clip(name: str, arch: str, pretrained: str, out: str | os.PathLike, label_space: list[str],
                    classnames: list[str], templates: list, weights_file: str | os.PathLike | None = None,
                    device: str = "cpu") -> None:
    """Save an open_clip model with a zero-shot head over ``classnames`` (aligned with ``label_space``)."""
    from . import clip

    if len(classnames) != len(label_space):
        raise RibError(f"{name}: {len(classnames)} class names for a label space of {len(label_space)}")
    quick_gelu = clip.uses_quick_gelu(arch, pretrained)  # from the tag, weights_file or not
    model, prep = clip.build(arch, pretrained, classnames, templates, weights_file=weights_file, device=device,
                             quick_gelu=quick_gelu)
    save(out, model, name=name, arch=f"open_clip:{arch}", arch_kwargs={"quick_gelu": quick_gelu},
         label_space=label_space, preprocessing=Preprocessing.from_dict(prep),
         meta={"kind": "pretrained", "weights": f"open_clip:{arch}/{pretrained}", "weights_file": str(weights_file or ""),
               "head": f"zero-shot, {len(templates)} templates", "parameters": count_parameters(model),
               "feature_dim": feature_dim(model)})


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def fetch_open_clip_folder(name: str, folder: str, out: str | os.PathLike, label_space: list[str],
                           classnames: list[str], templates: list, device: str = "cpu") -> None:
    """Save the open_clip model of a model folder (open_clip_config.json and its weights, as open_clip's
    Hugging Face repositories hold them) with a zero-shot head. Its activation is the config's; the
    config is kept in the checkpoint, so the checkpoint loads without the folder."""
    from . import clip
    from .registry import open_clip_folder_config

    if len(classnames) != len(label_space):
        raise RibError(f"{name}: {len(classnames)} class names for a label space of {len(label_space)}")
    model_cfg = open_clip_folder_config(folder)["model_cfg"]
    if not any(p.suffix in WEIGHT_SUFFIXES for p in Path(folder).iterdir()):
        raise MissingFileError(f"{folder}: no weights file in this open_clip model folder "
                               f"(expected one of {', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    quick_gelu = clip.folder_quick_gelu(model_cfg)
    model, prep = clip.build(f"{LOCAL_DIR}{folder}", None, classnames, templates, device=device, quick_gelu=quick_gelu)
    save(out, model, name=name, arch=f"open_clip:{LOCAL_DIR}{folder}",
         arch_kwargs={"quick_gelu": quick_gelu, "model_cfg": model_cfg}, label_space=label_space,
         preprocessing=Preprocessing.from_dict(prep),
         meta={"kind": "pretrained", "weights": f"open_clip:{LOCAL_DIR}{folder}", "weights_file": folder,
               "head": f"zero-shot, {len(templates)} templates", "parameters": count_parameters(model),
               "feature_dim": feature_dim(model)})


def fetch(spec, out: str | os.PathLike, label_space: list[str], weights_file: str | os.PathLike | None = None,
          device: str = "cpu") -> None:
    """Put a registry model's pretrained checkpoint at ``out`` (models/<suite>/<model>/pretrained.pt)."""
    if spec.source == "timm":
        fetch_timm(spec.name, spec.arch, out, label_space, weights_file, arch_kwargs=spec.arch_kwargs,
                   preprocessing=spec.preprocessing)
    elif spec.source == "file":
        fetch_timm(spec.name, spec.arch, out, label_space, weights_file or spec.weights.split(":", 1)[1],
                   arch_kwargs=spec.arch_kwargs, preprocessing=spec.preprocessing)
    elif spec.open_clip_folder:
        from . import clip

        fetch_open_clip_folder(spec.name, spec.open_clip_folder, out, label_space,
                               clip.imagenet_classnames(), clip.imagenet_templates(spec.templates), device=device)
    elif spec.source == "open_clip":
        from . import clip

        arch, _, tag = spec.weights.split(":", 1)[1].partition("/")
        fetch_open_clip(spec.name, arch, tag, out, label_space, clip.imagenet_classnames(),
                        clip.imagenet_templates(spec.templates),
                        weights_file=weights_file or spec.weights_file, device=device)
    else:
        raise RibError(f"model {spec.name!r} is not fetched (weights: {spec.weights}); see `rib pretrain`")
