"""Building networks from the registry and saving/loading rib checkpoints.

A rib checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``) that carries
everything needed to rebuild and use the model: the timm architecture and its arguments, the
label space of the head, the preprocessing, the weights and a ``meta`` record of how it was made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import FormatError, MissingFileError
from ..io import atomic_path
from .registry import ModelSpec, Preprocessing

FORMAT = "rib.checkpoint/1"


def create(arch: str, arch_kwargs: dict, num_classes: int) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **arch_kwargs)


def build(spec: ModelSpec, num_classes: int) -> nn.Module:
    return create(spec.arch, spec.arch_kwargs, num_classes)


def head(model: nn.Module) -> nn.Module:
    """The classification head (timm's ``get_classifier``)."""
    return model.get_classifier()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def feature_dim(model: nn.Module) -> int:
    return int(model.num_features)


@dataclass
class Checkpoint:
    model: nn.Module
    name: str
    arch: str
    arch_kwargs: dict
    label_space: list[str]
    preprocessing: Preprocessing
    meta: dict


def save(path: str | os.PathLike, model: nn.Module, *, name: str, arch: str, arch_kwargs: dict,
         label_space: list[str], preprocessing: Preprocessing, meta: dict) -> None:
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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: str | os.PathLike, map_location="cpu") -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise FormatError(f"{path}: not a readable rib checkpoint ({type(err).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FormatError(f"{path}: not a rib checkpoint (expected format {FORMAT})")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in payload["arch_kwargs"].items()}
    model = create(payload["arch"], kwargs, len(payload["label_space"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise FormatError(f"{path}: weights do not fit architecture {payload['arch']} ({first})") from None
    return Checkpoint(model, payload["name"], payload["arch"], kwargs, payload["label_space"],
                      Preprocessing.from_dict(payload["preprocessing"]), payload["meta"])


def fetch_timm(name: str, out: str | os.PathLike, label_space: list[str], weights_file: str | None = None) -> None:
    """Save timm's pretrained ``name`` as a rib checkpoint, with the model's own preprocessing.

    The weights come from timm's download (the Hugging Face hub; needs internet) or, with
    ``weights_file``, from a local file of the same weights.
    """
    import timm
    from timm.data import resolve_data_config

    from ..errors import RibError

    overlay = {"pretrained_cfg_overlay": {"file": str(weights_file)}} if weights_file else {}
    try:
        model = timm.create_model(name, pretrained=True, **overlay)
    except Exception as err:  # hub, network and file errors come in many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        where = f"from {weights_file}" if weights_file else "(this needs internet: run it on a machine that has it)"
        raise RibError(f"{name}: could not load pretrained weights {where}: {first}") from None
    if model.num_classes != len(label_space):
        raise RibError(f"{name}: its head has {model.num_classes} classes, the suite's label space {len(label_space)}")
    cfg = resolve_data_config({}, model=model)
    prep = Preprocessing(int(cfg["input_size"][-1]), str(cfg["interpolation"]), float(cfg["crop_pct"]),
                         tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]))
    save(out, model, name=name, arch=name, arch_kwargs={}, label_space=label_space, preprocessing=prep,
         meta={"kind": "pretrained", "weights": f"timm:{name}", "weights_file": str(weights_file or ""),
               "parameters": count_parameters(model), "feature_dim": feature_dim(model)})
