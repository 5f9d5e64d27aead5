"""Fine-tuning methods, registered by name.

A method is one small class in its own module (see :mod:`rib.methods.base`). Registering a new one
is one entry here; the trainer never names a method. Entries are import paths so that reading
the registry (configuration checks) does not import torch.
"""

from __future__ import annotations

import importlib

from ..errors import UnknownNameError

METHODS: dict[str, str] = {
    "ft": "rib.methods.ft:FullFineTuning",
    "lp": "rib.methods.lp:LinearProbing",
}


def get_method(name: str, config: dict):
    """Instantiate the method ``name`` with its (merged) schedule/config."""
    try:
        target = METHODS[name]
    except KeyError:
        raise UnknownNameError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(config)
