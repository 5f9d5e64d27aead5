"""Plugins (rib.plugins): a dataset, a model and a method added from outside rib.

tests/plugin/ is an example plugin package (docs/plugins.md). The end-to-end test installs it with
pip into a folder of its own (on PYTHONPATH for rib's processes only: the test session's
environment does not change) and runs a small grid with its dataset, model and method through
Snakemake; then `rib cell` and `rib dvc` with them. The other tests load it, or small modules
written for them, from the params file's `plugins:` list in-process, registries restored afterwards.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from rib import config, plugins
from tests import faults
from tests.conftest import REPO, TINY_PARAMS, rib_env

PLUGIN_SRC = REPO / "tests" / "plugin"
MODEL = "tiny_resnet.local"


@pytest.fixture
def registry(monkeypatch):
    """Plugins registered by a test are forgotten after it (modules written by it too)."""
    restore = plugins.snapshot()
    before = set(sys.modules)
    yield monkeypatch
    restore()
    for name in set(sys.modules) - before:
        if name.startswith(("lab_", "rib_example_plugin")):
            del sys.modules[name]


def plugin_params(plugin_list: list[str] | None = None, **settings) -> dict:
    """The tiny configuration on the example plugin's model, method and dataset: FT with decay and
    FT on the plugin's photos, evaluated on the source set, sketch and the photos."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["grid"] = {"models": [MODEL], "methods": ["ft_decay", "ft"], "source": "source",
                      "datasets": ["photos", "sketch"], "finetune_on": ["photos"]}
    params["methods"] = {"ft": {}, "ft_decay": {"strength": 0.001, **settings}}
    params["report"] = {"focus_dataset": "photos", "focus_method": "ft_decay"}
    params["train"]["epochs"] = 2
    params["runtime"]["cache"] = False  # fewer jobs: every dataset is decoded by the job that reads it
    if plugin_list is not None:
        params["plugins"] = plugin_list
    return params


EXAMPLE = ["rib_example_plugin:register_datasets", "rib_example_plugin:register_models",
           "rib_example_plugin:register_methods"]


def write_lab_files(root: Path, num_classes: int) -> None:
    """What the lab keeps in example-data/: its photos (a folder per class) and the model's weights."""
    import timm
    import torch

    rng = np.random.default_rng(0)
    for c, name in enumerate(("circle", "square", "triangle")):
        folder = root / "example-data" / "photos" / name
        folder.mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 60, (16, 16, 3)) + np.array([80 * c, 40, 200 - 80 * c])
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{name}_{i}.png")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=num_classes, channels=(8, 16, 32, 64), stem_width=8)
    torch.save(net.state_dict(), root / "example-data" / "tiny_resnet.pt")


def one_line_error(params: dict) -> str:
    with pytest.raises(config.ConfigError) as err:
        config.validate(params)
    message = str(err.value)
    assert "\n" not in message and message.startswith("params.yaml: ")
    return message


def write_module(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text("from rib import plugins\n" + textwrap.dedent(body))


# ----------------------------------------------------------------------------------------------
# In-process: loading from params, what is registered, and every error in one line
# ----------------------------------------------------------------------------------------------
def test_example_plugin_from_the_params_list(registry):
    registry.syspath_prepend(str(PLUGIN_SRC))
    params = config.validate(plugin_params(EXAMPLE))
    from rib import grid, status
    from rib.data.suites import get_suite
    from rib.models.registry import get_model

    photos = get_suite(params).dataset("photos")
    assert photos.role == "shift" and photos.source.folder == "example-data/photos"
    assert [(c.folder, c.wnids) for c in photos.classes] == [("circle", ("n99000001",)), ("square", ("n99000002",)),
                                                             ("triangle", ("n99000003",))]
    spec = get_model(MODEL, params)
    assert spec.weights == "file:example-data/tiny_resnet.pt" and spec.preprocessing.input_size == 16
    assert grid.listing(params, "finetune")[0] == "checkpoints/rib-mini/tiny_resnet.local/ft_decay/photos/model.pt"
    text = status.methods_text(params)
    assert ("ft_decay (train; not in the reference code; plugin rib_example_plugin:register_methods (plugins[2]))"
            in text)
    assert "    strength: 0.0001  # the weight of the squared-weights penalty" in text
    # the method: cross-entropy plus strength x the squared weights
    import torch

    from rib.methods import get_method

    method = get_method("ft_decay", config.method_schedule(params, "ft_decay"))
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        logits, targets = net(torch.ones(4, 3)), torch.tensor([0, 1, 0, 1])
        squares = sum(float(p.pow(2).sum()) for p in net.parameters())
        ce = float(torch.nn.functional.cross_entropy(logits, targets))
        assert float(method.loss(net, None, logits, targets, None)) == pytest.approx(ce + 0.001 * squares)


def test_plugin_errors_are_one_line_naming_the_plugin(registry, tmp_path):
    registry.syspath_prepend(str(PLUGIN_SRC))
    registry.syspath_prepend(str(tmp_path))
    tiny = yaml.safe_load(TINY_PARAMS.read_text())

    def error(plugin_list: list[str]) -> str:
        """The error of the tiny configuration with these plugins (each call starts from rib's registry)."""
        params = copy.deepcopy(tiny)
        params["plugins"] = plugin_list
        restore = plugins.snapshot()
        try:
            return one_line_error(params)
        finally:
            restore()

    # without its plugin, a plugin's model is an unknown name, as any
    assert one_line_error(plugin_params([])) == ("params.yaml: grid.models[0]: unknown model 'tiny_resnet.local'; "
                                                 "did you mean 'mini_resnet.narrow'?")
    # a module that is not there, a function it lacks, a function that fails
    assert error(["lab_missing"]) == ("params.yaml: plugin lab_missing (plugins[0]): cannot import lab_missing: "
                                      "ModuleNotFoundError: No module named 'lab_missing'")
    write_module(tmp_path, "lab_broken", """
        def register():
            raise ValueError("our dataset server is down\\nsecond line")
    """)
    assert error(["lab_broken:nothing"]) == ("params.yaml: plugin lab_broken:nothing (plugins[0]): module lab_broken "
                                             "has no nothing")
    assert error(["lab_broken:register"]) == ("params.yaml: plugin lab_broken:register (plugins[0]): register() "
                                              "failed: ValueError: our dataset server is down")
    # names rib has already, or another plugin has
    write_module(tmp_path, "lab_ft", """
        from rib.methods import MethodInfo
        plugins.register_method("ft", MethodInfo("rib.methods.ft:FullFineTuning"))
    """)
    assert error(["lab_ft"]) == ("params.yaml: plugin lab_ft (plugins[0]): method 'ft' is one of rib's own methods; "
                                 "register yours under another name")
    write_module(tmp_path, "lab_twice", """
        from rib_example_plugin import FT_DECAY
        plugins.register_method("ft_decay", FT_DECAY)
    """)
    assert error(["rib_example_plugin:register_methods", "lab_twice"]) == (
        "params.yaml: plugin lab_twice (plugins[1]): method 'ft_decay' is already registered by plugin "
        "rib_example_plugin:register_methods (plugins[0])")
    write_module(tmp_path, "lab_sketch", """
        from rib.data.suites import DatasetClass, DatasetSpec, Source
        ours = DatasetSpec("sketch", "shift", "wnid_folders", "ours", (DatasetClass("circle", ("n99000001",)),),
                           source=Source(folder="x"))
        plugins.register_dataset("sketch", ours, suite="rib-mini")
    """)
    assert error(["lab_sketch"]) == ("params.yaml: plugin lab_sketch (plugins[0]): dataset 'sketch' is one of suite "
                                     "'rib-mini''s own datasets; register yours under another name")
    write_module(tmp_path, "lab_mini", """
        plugins.register_model("mini_vit.narrow", lambda params: None, suite="rib-mini")
    """)
    assert "model 'mini_vit.narrow' is one of rib's own models of suite 'rib-mini'" in error(["lab_mini"])
    # objects rib cannot use
    write_module(tmp_path, "lab_bad", """
        from rib.data.suites import DatasetClass, DatasetSpec, Source
        from rib.methods import MethodInfo
        from rib.models.registry import ModelSpec

        def model_string():
            plugins.register_model("ours", "resnet18", suite="rib-mini")

        def model_weights():
            plugins.register_model("ours", ModelSpec("ours", "resnet18", weights="pretrain:narrow"), suite="rib-mini")

        def method_schema():
            plugins.register_method("ours", MethodInfo("rib.methods.ft:FullFineTuning",
                                                       options={"strength": {"type": "numbr", "default": 1}}))

        def method_default():
            plugins.register_method("ours", MethodInfo("rib.methods.ft:FullFineTuning",
                                                       options={"strength": {"type": "number", "default": "1"}}))

        def method_target():
            plugins.register_method("ours", MethodInfo("lab_nowhere:Method"))

        def dataset_classes():
            ours = DatasetSpec("ours", "shift", "wnid_folders", "ours", (DatasetClass("dog", ("n02085620",)),),
                               source=Source(folder="x"))
            plugins.register_dataset("ours", ours, suite="rib-mini")

        def dataset_source():
            plugins.register_dataset("ours", DatasetSpec("ours", "shift", "wnid_folders", "ours",
                                     (DatasetClass("circle", ("n99000001",)),)), suite="rib-mini")

        def dataset_suite():
            plugins.register_dataset("ours", lambda suite: None, suite="imagenet-1k")
    """)
    bad = {
        "model_string": "model 'ours': expected a rib ModelSpec or a function of params returning one, got str",
        "model_weights": "model 'ours': weights 'pretrain:narrow': expected file:PATH (a local weights file) or "
                         "timm:NAME.TAG",
        "method_schema": "method 'ours': setting 'strength': not a valid JSON Schema (",
        "method_default": "method 'ours': setting 'strength': its default '1' does not fit its schema ('1' is not of "
                          "type 'number')",
        "method_target": "method 'ours': target 'lab_nowhere:Method': no module lab_nowhere",
        "dataset_classes": "dataset 'ours': class folder 'dog' maps onto 'n02085620', not an id of suite 'rib-mini''s "
                           "label space",
        "dataset_source": "dataset 'ours': source: expected Source(folder=PATH), archives or manual instructions",
        "dataset_suite": "dataset 'ours': unknown suite 'imagenet-1k' (one of imagenet-rib, rib-mini)",
    }
    for function, expected in bad.items():
        message = error([f"lab_bad:{function}"])
        assert message.startswith(f"params.yaml: plugin lab_bad:{function} (plugins[0]): {expected}"), message
    # a methods entry that the plugin method's settings refuse: rib's own check, naming the plugin
    assert one_line_error(plugin_params(EXAMPLE, strength=-1)) == (
        "params.yaml: methods.ft_decay.strength: expected a value at least 0, got -1 (method 'ft_decay' of plugin "
        "rib_example_plugin:register_methods (plugins[2]))")
    assert one_line_error(plugin_params(EXAMPLE, strenght=1)).startswith(
        "params.yaml: methods.ft_decay.strenght: unknown key; did you mean 'strength'?")


def test_entry_points_load_and_must_register_their_kind(registry, tmp_path):
    from importlib import metadata

    registry.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "lab_entry", """
        from rib.methods import MethodInfo

        def methods():
            plugins.register_method("ft_lab", MethodInfo("rib.methods.ft:FullFineTuning"))

        def nothing():
            pass
    """)
    found = [metadata.EntryPoint("ft_lab", "lab_entry:methods", "rib.methods")]
    registry.setattr(metadata, "entry_points", lambda: metadata.EntryPoints(found))
    registry.setattr(plugins, "_entry_points_loaded", False)
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["methods"]["ft_lab"] = {"lr": 0.1}
    params["grid"]["methods"] = ["ft_lab"]
    params["report"]["focus_method"] = "ft_lab"
    config.validate(params)  # the entry point's method, without a plugins list
    assert plugins.method_origin("ft_lab").where == "entry point rib.methods:ft_lab"
    found.append(metadata.EntryPoint("lab", "lab_entry:nothing", "rib.models"))
    registry.setattr(plugins, "_entry_points_loaded", False)
    assert one_line_error(params) == ("params.yaml: plugin lab_entry:nothing (entry point rib.models:lab): registered "
                                      "no model (an entry point of group rib.models registers one with "
                                      "rib.plugins.register_model)")


# ----------------------------------------------------------------------------------------------
# End to end: the installed example plugin through Snakemake, rib cell and rib dvc
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugin installed (pip, no dependencies, no index) into a folder of its own."""
    root = tmp_path_factory.mktemp("plugin")
    shutil.copytree(PLUGIN_SRC, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
                           "--no-build-isolation", "--no-index", "--target", str(root / "site"), str(root / "src")],
                          text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return root / "site"


@pytest.mark.e2e
def test_installed_plugin_runs_through_snakemake(plugin_site, tmp_path):
    params = plugin_params()  # no plugins list: the installed entry points load by themselves
    ws = faults.make_workspace(tmp_path / "ws", params)
    write_lab_files(ws, params["synthetic"]["num_classes"])
    env = rib_env()
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}{os.pathsep}{plugin_site}"

    def run(*cmd: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), cwd=ws, env=env, text=True, capture_output=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    run(sys.executable, "-m", "snakemake", "--cores", "2", "reports/rib-mini/summary_by_method.csv")
    # the lab's photos were copied in (the fetch job), the model's weights made its checkpoint
    assert sorted(p.name for p in (ws / "data/rib-mini/raw/photos").glob("[!.]*")) == ["circle", "square", "triangle"]
    info = json.loads((ws / "data/rib-mini/prepared/photos/info.json").read_text())
    assert info["num_images"] == 24 and info["parts"] == {"finetune": 12, "heldout": 12}
    cells = pd.read_csv(ws / "reports/rib-mini/cells.csv")
    assert set(cells.model) == {MODEL} and set(cells.eval_dataset) == {"source", "photos", "sketch"}
    assert set(cells.method) == {"pretrained", "ft_decay", "ft"} and len(cells) == 3 * 3
    assert list(pd.read_csv(ws / "reports/rib-mini/summary_by_method.csv").method) == ["ft_decay", "ft"]
    record = json.loads((ws / "results/rib-mini" / MODEL / "ft_decay/photos/photos.json").read_text())
    assert record["subset"] == "heldout" and record["n"] == 12
    assert record["method_settings"]["method"] == "ft_decay" and record["method_settings"]["strength"] == 0.001
    assert {"plugin": "rib_example_plugin:register_methods", "source": "entry point rib.methods:ft_decay",
            "distribution": "rib-example-plugin", "version": "0.1.0"} in record["plugins"]
    # rib cell walks the graph back to the plugin's model, and rib dvc renders its stages
    cell = run(sys.executable, "-m", "rib", "cell", MODEL, "ft_decay", "photos", "sketch").stdout
    assert "cell:  results/rib-mini/tiny_resnet.local/ft_decay/photos/sketch.json\nvalue: top-1 " in cell
    assert "rib models fetch tiny_resnet.local --out models/rib-mini/tiny_resnet.local/pretrained.pt" in cell
    assert "dvc repro evaluate-finetuned@tiny_resnet.local-ft_decay-photos" in cell
    run(sys.executable, "-m", "rib", "dvc")
    stages = yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]
    assert stages["fetch"]["foreach"] == {"photos": {"raw": "data/rib-mini/raw/photos",
                                                     "prepared": "data/rib-mini/prepared/photos"}}
    assert set(stages["generate"]["foreach"]) == {"source", "sketch"}
    assert list(stages["fetch-weights"]["foreach"]) == [MODEL] and "pretrain" not in stages
    assert list(stages["finetune-ft_decay"]["foreach"]) == [f"{MODEL}-photos"]
