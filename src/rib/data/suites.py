"""Dataset suites: the label space of the models and the datasets that share it.

A suite is what ``params.yaml: suite`` names. It fixes the model output space (an ordered list of
WordNet-like ids, the ImageNet-1K analogue) and, for every dataset, its role, its on-disk layout
and its classes mapped onto that space. Suites are registered by name; the synthetic ``rib-mini``
suite is built from the ``synthetic`` section of the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UnknownNameError

ROLES = ("source", "shift", "corpus")
LAYOUTS = ("wnid_folders", "index_folders", "mapped_folders", "corruption_tree")


@dataclass(frozen=True)
class DatasetClass:
    """One class of a dataset: its folder name and the label-space ids it stands for."""

    folder: str
    wnids: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    role: str  # source | shift | corpus
    layout: str  # see LAYOUTS
    description: str
    # Classes in label order. None means "discover them from the layout" (mapped folders).
    classes: tuple[DatasetClass, ...] | None = None
    # For corruption_tree layouts: the corruption names and severities expected on disk.
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = ()

    @property
    def is_corruption_tree(self) -> bool:
        return self.layout == "corruption_tree"


@dataclass(frozen=True)
class Suite:
    name: str
    label_space: tuple[str, ...]
    class_names: dict[str, str]
    datasets: dict[str, DatasetSpec]
    synthetic: bool = False
    model_names: tuple[str, ...] = field(default=())

    def dataset(self, name: str) -> DatasetSpec:
        try:
            return self.datasets[name]
        except KeyError:
            raise UnknownNameError(f"suite {self.name!r} has no dataset {name!r}; it has: {', '.join(self.datasets)}") from None

    def names(self, role: str) -> list[str]:
        return [n for n, d in self.datasets.items() if d.role == role]


SuiteBuilder = Callable[[dict], Suite]
_SUITES: dict[str, SuiteBuilder] = {}


def register_suite(name: str):
    def deco(fn: SuiteBuilder) -> SuiteBuilder:
        _SUITES[name] = fn
        return fn

    return deco


def suite_names() -> list[str]:
    _load_builtin()
    return sorted(_SUITES)


def get_suite(params: dict) -> Suite:
    """Build the suite that ``params['suite']`` names, from the (validated) parameters."""
    _load_builtin()
    name = params["suite"]
    if name not in _SUITES:
        raise UnknownNameError(f"unknown suite {name!r}; known suites: {', '.join(sorted(_SUITES))}")
    return _SUITES[name](params)


def _load_builtin() -> None:
    # Importing the modules registers their suites.
    from .synthetic import suite as _mini  # noqa: F401
