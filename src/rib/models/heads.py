"""Classification heads that compute their logits in float32, under bf16 autocast too.

Under ``torch.autocast(dtype=torch.bfloat16)`` a linear head would run in bf16 and round its
logits to bf16's 8 significant bits: steps of 0.125 between 16 and 32, where a zero-shot head
(logit scale 100) puts its logits. A head made :func:`float32` casts its input to float32 and
runs with autocast disabled, so its logits are exactly those of the fp32 head on the (autocast)
features. It is the same module with another class (a subclass of its own): its parameters,
state-dict keys, ``copy.deepcopy`` and ``network.head(model)`` are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class Float32Head:
    """Mixin: ``forward`` in float32 with autocast off (put before the module's own class)."""

    def forward(self, x: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float(), *args, **kwargs)


class Float32Linear(Float32Head, nn.Linear):
    pass


class Float32Identity(Float32Head, nn.Identity):
    pass


_CLASSES: dict[type, type] = {nn.Linear: Float32Linear, nn.Identity: Float32Identity}


def float32_class(cls: type) -> type:
    """The float32 subclass of a head class (made once for classes other than Linear and Identity;
    kept in this module's namespace so that a pickled model finds it)."""
    if issubclass(cls, Float32Head):
        return cls
    if cls not in _CLASSES:
        name = f"Float32{cls.__name__}"
        while name in globals():
            name += "_"
        made = type(name, (Float32Head, cls), {"__module__": __name__, "__qualname__": name,
                                               "__doc__": f"{cls.__qualname__} in float32 (rib.models.heads)."})
        globals()[name] = _CLASSES[cls] = made
    return _CLASSES[cls]


def float32(head: nn.Module) -> nn.Module:
    """Make ``head`` compute in float32 (in place; returns it)."""
    head.__class__ = float32_class(type(head))
    return head


def float32_heads(model: nn.Module) -> nn.Module:
    """Make the classification head(s) of ``model`` (``get_classifier()``; a tuple for timm's
    distilled models) compute in float32, in place; returns ``model``."""
    get = getattr(model, "get_classifier", None)
    heads = get() if get is not None else ()
    for head in heads if isinstance(heads, (tuple, list)) else (heads,):
        if isinstance(head, nn.Module):
            float32(head)
    return model
