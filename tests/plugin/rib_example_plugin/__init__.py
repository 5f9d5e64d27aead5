"""An example rib plugin: a lab's own dataset, model and method, registered from outside rib.

* ``photos``: the lab's photos of shapes, one folder per class named as the class (``circle/``,
  ``square/``, ``triangle/``), joined to the rib-mini suite as a shift dataset (a dataset of D);
  the pipeline copies it from ``example-data/photos`` in the project folder.
* ``tiny_resnet.local``: a ResNet-18 layout at an eighth of the width (timm's ``resnet18``), its
  weights in the lab's file ``example-data/tiny_resnet.pt`` (a state dict of that architecture, with
  the suite's classes in its head).
* ``ft_decay``: full fine-tuning with weight decay toward zero, ``strength`` x the sum of the squared
  weights added to the loss (rib_example_plugin.decay).

pyproject.toml's entry points name the three functions below; rib calls them whenever it loads a
params file. Nothing here imports torch (configuration checks stay fast): the method's class is
imported only by the jobs that train with it.
"""

from __future__ import annotations

from rib import plugins
from rib.data.suites import DatasetClass, DatasetSpec, Source
from rib.methods import MethodInfo
from rib.models.registry import ModelSpec, Preprocessing

__version__ = "0.1.0"

DATA = "example-data"  # the lab's files, relative to the project folder
PHOTO_CLASSES = ("circle", "square", "triangle")


def photos(suite) -> DatasetSpec:
    """The dataset in the suite it joins: each class folder mapped onto the label-space id of the
    class with that name."""
    wnid_of = {name: wnid for wnid, name in suite.class_names.items()}
    return DatasetSpec(
        name="photos", role="shift", layout="wnid_folders",
        description="the lab's photos of shapes, one folder per class",
        classes=tuple(DatasetClass(name, (wnid_of[name],)) for name in PHOTO_CLASSES if name in wnid_of),
        source=Source(folder=f"{DATA}/photos"))


def tiny_resnet(params: dict) -> ModelSpec:
    """The model at the suite's image size (rib-mini: synthetic.image_size)."""
    return ModelSpec(
        name="tiny_resnet.local", arch="resnet18", arch_kwargs={"channels": (8, 16, 32, 64), "stem_width": 8},
        family="cnn", preprocessing=Preprocessing(params["synthetic"]["image_size"]),
        weights=f"file:{DATA}/tiny_resnet.pt", description="ResNet-18 layout at 1/8 width, the lab's weights")


FT_DECAY = MethodInfo(
    "rib_example_plugin.decay:DecayToZero",
    summary="full fine-tuning with weight decay toward zero: strength x the sum of squared weights added to the loss",
    options={"strength": {"type": "number", "minimum": 0, "default": 0.0001,
                          "description": "the weight of the squared-weights penalty"}})


def register_datasets() -> None:
    plugins.register_dataset("photos", photos, suite="rib-mini")


def register_models() -> None:
    plugins.register_model("tiny_resnet.local", tiny_resnet, suite="rib-mini")


def register_methods() -> None:
    plugins.register_method("ft_decay", FT_DECAY)
