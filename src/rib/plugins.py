"""Extending rib from outside the package: plugins that add datasets, models and methods.

A plugin is a module, or a function in one (``module:function``), that calls :func:`register_dataset`,
:func:`register_model` or :func:`register_method`. rib finds plugins in two places:

* entry points of installed distributions, in the groups ``rib.datasets``, ``rib.models`` and
  ``rib.methods``: each names a module (importing it registers) or a function (called with no
  arguments), and must register at least one thing of its group's kind;
* the params file's ``plugins:`` list, in the same two forms: modules importable where rib runs
  (installed, or on ``PYTHONPATH``).

Plugins are loaded where a configuration is validated (:func:`rib.config.validate`, and
:func:`rib.steps.load_params` for a params dict), so Snakemake's input functions, every ``rib`` job,
DVC's stages and ``rib cell`` see the same registry. Each is loaded once per process.

What a plugin registers is checked as rib's own entries are: a method's settings are JSON Schema
and every ``methods`` entry using it is validated against them; a model's weights are a local file or
timm's; a dataset's classes lie in its suite's label space. A name taken by rib itself or by another
plugin is refused. Every problem is one :class:`PluginError` line naming the plugin.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

from .config import ConfigError

GROUPS = {"rib.datasets": "dataset", "rib.models": "model", "rib.methods": "method"}
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a path component and a DVC stage name
TARGET = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$")  # module or module:function
# Where a plugin model's weights come from (rib.models.registry.ModelSpec.weights)
MODEL_SOURCES = ("file", "timm")
DATASET_ROLES = ("source", "shift")


class PluginError(ConfigError):
    """A plugin that cannot be loaded, or registers something rib cannot use (one line, naming it)."""


@dataclass(frozen=True)
class Plugin:
    """Where a registration comes from: a module or ``module:function``, found by an entry point
    (``where`` = ``entry point GROUP:NAME``, with its distribution) or listed in params
    (``plugins[i]``); or code that called a register function itself (``where`` = ``module X``)."""

    target: str
    where: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        made_by = f"{self.distribution} {self.version}, " if self.distribution else ""
        return f"plugin {self.target} ({made_by}{self.where})"

    def record(self) -> dict:
        """What provenance records: the plugin, and the distribution and version it comes from."""
        dist, version = self.distribution, self.version
        if dist is None:
            dist, version = _distribution_of(self.target.partition(":")[0])
        return {"plugin": self.target, "source": self.where, "distribution": dist, "version": version}


_loaded: dict[str, Plugin] = {}            # target -> the plugin loaded from it
_made: dict[str, set[str]] = {}            # target -> the kinds of thing it registered
_loading: list[Plugin] = []                # the plugin being loaded (registrations are its)
_entry_points_loaded = False
_method_origin: dict[str, Plugin] = {}
_models: dict[str, dict[str, tuple[object, Plugin]]] = {}     # suite -> name -> (spec or factory, plugin)
_datasets: dict[str, dict[str, tuple[object, Plugin]]] = {}   # suite -> name -> (spec or factory, plugin)
generation = 0  # bumped at every registration: a suite built before it is built again (rib.data.suites)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def load(params: dict | None = None) -> None:
    """Load the installed entry points (once per process) and the modules of ``params['plugins']``."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        load_entry_points()
        _entry_points_loaded = True  # after a failure, the next load says it again
    for i, target in enumerate((params or {}).get("plugins") or ()):
        _load(target, Plugin(target, f"plugins[{i}]"))


def load_entry_points() -> None:
    """Every entry point of the groups rib.datasets, rib.models and rib.methods, in a fixed order."""
    from importlib.metadata import entry_points

    found = entry_points()
    for group, kind in GROUPS.items():
        for ep in sorted(found.select(group=group), key=lambda e: (e.dist.name if e.dist else "", e.name)):
            dist = ep.dist
            plugin = Plugin(ep.value, f"entry point {group}:{ep.name}", dist.name if dist else None,
                            dist.version if dist else None)
            _load(ep.value, plugin)
            if kind not in _made.get(ep.value, ()):
                raise PluginError(f"{plugin}: registered no {kind} (an entry point of group {group} registers one "
                                  f"with rib.plugins.register_{kind})")


def _load(target: str, plugin: Plugin) -> None:
    if target in _loaded:
        return
    if not isinstance(target, str) or not TARGET.match(target):
        raise PluginError(f"{plugin}: expected a module or module:function, got {target!r}")
    module_name, _, attr = target.partition(":")
    _loading.append(plugin)
    try:
        try:
            module = importlib.import_module(module_name)
        except PluginError:
            raise
        except Exception as err:  # whatever the plugin's import raises
            raise PluginError(f"{plugin}: cannot import {module_name}: {_one_line(err)}") from None
        if attr:
            obj = module
            for part in attr.split("."):
                if not hasattr(obj, part):
                    raise PluginError(f"{plugin}: module {module_name} has no {attr}")
                obj = getattr(obj, part)
            if not callable(obj):
                raise PluginError(f"{plugin}: {attr} is not a function (expected one that registers, called "
                                  "with no arguments)")
            try:
                obj()
            except PluginError:
                raise
            except Exception as err:  # noqa: BLE001 - the plugin's own failure, said in one line
                raise PluginError(f"{plugin}: {attr}() failed: {_one_line(err)}") from None
    finally:
        _loading.pop()
    _loaded[target] = plugin
    _made.setdefault(target, set())


def _one_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _origin(kind: str) -> Plugin:
    """The plugin a registration belongs to: the one being loaded, else the calling module."""
    if _loading:
        plugin = _loading[-1]
    else:
        caller = sys._getframe(2).f_globals.get("__name__", "?")
        plugin = Plugin(caller, f"module {caller}")
    _made.setdefault(plugin.target, set()).add(kind)
    return plugin


def loaded() -> list[dict]:
    """The plugins this process loaded (entry points and params' modules), for provenance."""
    return [p.record() for p in _loaded.values()]


@lru_cache(maxsize=None)
def _distribution_of(module: str) -> tuple[str | None, str | None]:
    """The installed distribution that provides a top-level module, and its version (None: none)."""
    from importlib.metadata import packages_distributions, version

    names = packages_distributions().get(module.split(".")[0]) or []
    if not names:
        mod = sys.modules.get(module.split(".")[0])
        return None, getattr(mod, "__version__", None)
    try:
        return names[0], version(names[0])
    except Exception:  # noqa: BLE001 - metadata without a version
        return names[0], None


# ----------------------------------------------------------------------------------------------
# Registering
# ----------------------------------------------------------------------------------------------
def _check_name(kind: str, name, plugin: Plugin) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise PluginError(f"{plugin}: {kind} name {name!r}: expected letters, digits, '_', '.' or '-' "
                          "(it names folders and DVC stages)")


def _bump() -> None:
    global generation
    generation += 1


def register_method(name: str, info) -> None:
    """Add a fine-tuning method: ``info`` is a :class:`rib.methods.MethodInfo` whose ``target``
    (``module:Class``) is a :class:`rib.methods.base.Method` subclass, and whose ``options`` are its
    settings as JSON Schema with defaults. ``methods`` entries of params name it like a built-in."""
    from .methods import METHODS, PRETRAINED_INGREDIENT, MethodInfo

    plugin = _origin("method")
    _check_name("method", name, plugin)
    if not isinstance(info, MethodInfo):
        raise PluginError(f"{plugin}: method {name!r}: expected a rib.methods.MethodInfo, got {type(info).__name__}")
    if name == PRETRAINED_INGREDIENT:
        raise PluginError(f"{plugin}: method {name!r}: the name is reserved for the pretrained model")
    owner = _method_origin.get(name)
    if name in METHODS and owner is None:
        raise PluginError(f"{plugin}: method {name!r} is one of rib's own methods; register yours under another name")
    if owner is not None and owner.target != plugin.target:
        raise PluginError(f"{plugin}: method {name!r} is already registered by {owner}")
    _check_method(name, info, plugin)
    METHODS[name] = info
    _method_origin[name] = plugin
    _bump()


def _check_method(name: str, info, plugin: Plugin) -> None:
    from jsonschema.exceptions import SchemaError

    from .config import _validator_class, schema
    from .methods import COMMON_OPTIONS

    what = f"{plugin}: method {name!r}"
    module, _, cls = info.target.partition(":") if isinstance(info.target, str) else ("", "", "")
    if not (module and cls and TARGET.match(info.target)):
        raise PluginError(f"{what}: target {info.target!r}: expected 'module:Class'")
    try:
        found = importlib.util.find_spec(module)
    except Exception:  # noqa: BLE001 - a parent package that cannot be imported
        found = None
    if found is None:
        raise PluginError(f"{what}: target {info.target!r}: no module {module}")
    if info.kind not in ("train", "weights"):
        raise PluginError(f"{what}: kind {info.kind!r}: expected 'train' or 'weights'")
    if not isinstance(info.options, dict):
        raise PluginError(f"{what}: options: expected a mapping of setting -> JSON Schema")
    taken = set(schema()["$defs"]["schedule"]["properties"]) | set(COMMON_OPTIONS)
    for key, spec in info.options.items():
        if key in taken:
            raise PluginError(f"{what}: setting {key!r} is a training setting every method has; name it otherwise")
        if not isinstance(spec, dict):
            raise PluginError(f"{what}: setting {key!r}: expected a JSON Schema mapping, got {type(spec).__name__}")
        body = {k: v for k, v in spec.items() if k not in ("default", "description", "reference")}
        try:
            _validator_class().check_schema(body)
        except SchemaError as err:
            raise PluginError(f"{what}: setting {key!r}: not a valid JSON Schema ({err.message})") from None
        if "default" in spec:
            error = next(iter(_validator_class()(body).iter_errors(spec["default"])), None)
            if error is not None:
                raise PluginError(f"{what}: setting {key!r}: its default {spec['default']!r} does not fit its "
                                  f"schema ({error.message})")
    for key in filter(None, (info.init_from, *info.ingredients_from)):
        if key not in info.options:
            raise PluginError(f"{what}: {key!r} (init_from or ingredients_from) is not one of its settings")


def _builtin_models(suite: str) -> set[str]:
    from .models.registry import MINI_ARCHS, PAPER_MODELS

    if suite == "rib-mini":
        from .data.synthetic.suite import CORPORA

        return {f"{arch}.{corpus}" for arch in MINI_ARCHS for corpus in CORPORA}
    return set(PAPER_MODELS) if suite == "imagenet-rib" else set()


def _check_suite(what: str, suite) -> None:
    from .data.suites import suite_names

    if suite not in suite_names():
        raise PluginError(f"{what}: unknown suite {suite!r} (one of {', '.join(suite_names())})")


def _suite_entry(plugin: Plugin, kind: str, name, spec, suite, cls: type, argument: str, table: dict) -> str:
    """The checks a model and a dataset share: the name, the suite, the object (one of ``cls`` or a
    function of ``argument`` returning one), not another plugin's name. Returns the errors' prefix."""
    _check_name(kind, name, plugin)
    what = f"{plugin}: {kind} {name!r}"
    _check_suite(what, suite)
    if not (isinstance(spec, cls) or callable(spec)):
        raise PluginError(f"{what}: expected a rib {cls.__name__} or a function of {argument} returning one, "
                          f"got {type(spec).__name__}")
    owner = table.get(suite, {}).get(name, (None, None))[1]
    if owner is not None and owner.target != plugin.target:
        raise PluginError(f"{what} is already registered by {owner}")
    return what


def register_model(name: str, spec, *, suite: str) -> None:
    """Add a pretrained model to ``suite``: a :class:`rib.models.registry.ModelSpec`, or a function
    of the params dict returning one (to follow settings such as ``synthetic.image_size``). Its
    ``weights`` are ``file:PATH`` (a weights file of the timm architecture ``arch`` built with
    ``arch_kwargs``; its head must have the suite's classes) or ``timm:NAME.TAG``; ``rib models fetch``
    turns them into the pipeline's pretrained checkpoint. Its name is the registered one."""
    from .models.registry import ModelSpec

    plugin = _origin("model")
    what = _suite_entry(plugin, "model", name, spec, suite, ModelSpec, "params", _models)
    if name in _builtin_models(suite):
        raise PluginError(f"{what} is one of rib's own models of suite {suite!r}; register yours under another name")
    if isinstance(spec, ModelSpec):
        _check_model(name, spec, plugin)
    _models.setdefault(suite, {})[name] = (spec, plugin)
    _bump()


def _check_model(name: str, spec, plugin: Plugin):
    from .models.registry import ModelSpec

    what = f"{plugin}: model {name!r}"
    if not isinstance(spec, ModelSpec):
        raise PluginError(f"{what}: expected a rib ModelSpec, got {type(spec).__name__}")
    spec = replace(spec, name=name)
    if spec.source not in MODEL_SOURCES or not spec.weights.partition(":")[2]:
        raise PluginError(f"{what}: weights {spec.weights!r}: expected file:PATH (a local weights file) or "
                          "timm:NAME.TAG")
    if not isinstance(spec.arch, str) or not spec.arch or spec.arch.startswith("open_clip:"):
        raise PluginError(f"{what}: arch {spec.arch!r}: expected a timm architecture")
    if spec.family not in ("cnn", "vit"):
        raise PluginError(f"{what}: family {spec.family!r}: expected 'cnn' or 'vit'")
    if not isinstance(spec.arch_kwargs, dict) or "num_classes" in spec.arch_kwargs:
        raise PluginError(f"{what}: arch_kwargs: expected a mapping without num_classes (the head has the "
                          "suite's classes)")
    return spec


def _made_by(factory: Callable, argument, what: str):
    """What a plugin's function returns for ``argument`` (the params, or the suite); whatever it
    raises becomes one PluginError line, prefixed by ``what``."""
    try:
        return factory(argument)
    except PluginError:
        raise
    except Exception as err:  # noqa: BLE001 - the plugin's function failed
        raise PluginError(f"{what}: its function failed: {_one_line(err)}") from None


def models(params: dict) -> dict:
    """The plugins' models of the params' suite, by name (functions called with ``params``)."""
    out = {}
    for name, (spec, plugin) in _models.get(params.get("suite"), {}).items():
        if callable(spec):
            spec = _made_by(spec, params, f"{plugin}: model {name!r}")
        out[name] = _check_model(name, spec, plugin)
    return out


def model_origin(suite: str, name: str) -> Plugin | None:
    return _models.get(suite, {}).get(name, (None, None))[1]


def method_origin(name: str) -> Plugin | None:
    """The plugin that registered method ``name`` (None: one of rib's own, or unknown)."""
    return _method_origin.get(name)


def register_dataset(name: str, spec, *, suite: str) -> None:
    """Add a dataset to ``suite``: a :class:`rib.data.suites.DatasetSpec`, or a function of the
    suite (its ``label_space`` and ``class_names``) returning one. Its role is ``shift`` (a dataset of
    D: fine-tuned on and evaluated) or ``source``; its ``layout`` one of rib's
    (:mod:`rib.data.layouts`: wnid_folders is a folder per class); its ``classes`` map each class
    folder onto label-space ids; its ``source`` says where the files come from: ``Source(folder=PATH)``
    (copied, hard links where possible), archives to download, or ``manual`` instructions.
    The pipeline fetches it (``rib data fetch``), prepares it and evaluates on it like a built-in."""
    from .data.suites import DatasetSpec

    plugin = _origin("dataset")
    _suite_entry(plugin, "dataset", name, spec, suite, DatasetSpec, "the suite", _datasets)
    _datasets.setdefault(suite, {})[name] = (spec, plugin)
    _bump()


def extend_suite(suite):
    """``suite`` with the plugins' datasets added (called by rib.data.suites when building it)."""
    entries = _datasets.get(suite.name)
    if not entries:
        return suite
    added = {}
    for name, (spec, plugin) in entries.items():
        what = f"{plugin}: dataset {name!r}"
        if name in suite.datasets:
            raise PluginError(f"{what} is one of suite {suite.name!r}'s own datasets; register yours under "
                              "another name")
        if callable(spec):
            spec = _made_by(spec, suite, what)
        added[name] = _check_dataset(name, spec, suite, what)
    return replace(suite, datasets={**suite.datasets, **added})


def _check_dataset(name: str, spec, suite, what: str):
    from .data.suites import LAYOUTS, DatasetSpec, Source

    if not isinstance(spec, DatasetSpec):
        raise PluginError(f"{what}: expected a rib DatasetSpec, got {type(spec).__name__}")
    spec = replace(spec, name=name)
    if spec.role not in DATASET_ROLES:
        raise PluginError(f"{what}: role {spec.role!r}: expected one of {', '.join(DATASET_ROLES)}")
    if spec.layout not in LAYOUTS:
        raise PluginError(f"{what}: layout {spec.layout!r}: expected one of {', '.join(LAYOUTS)}")
    if spec.is_corruption_tree and not (spec.corruptions and spec.severities):
        raise PluginError(f"{what}: a corruption_tree layout names its corruptions and severities")
    if spec.classes is None:
        if spec.layout != "mapped_folders":
            raise PluginError(f"{what}: classes: expected its class folders mapped onto the label space "
                              "(only mapped_folders reads them from mapping files)")
    else:
        if not spec.classes:
            raise PluginError(f"{what}: classes: expected at least one class")
        space = set(suite.label_space)
        folders = set()
        for cls in spec.classes:
            if cls.folder in folders:
                raise PluginError(f"{what}: class folder {cls.folder!r} is listed twice")
            folders.add(cls.folder)
            outside = [w for w in cls.wnids if w not in space]
            if not cls.wnids or outside:
                raise PluginError(f"{what}: class folder {cls.folder!r} maps onto "
                                  f"{outside[0] if outside else 'nothing'!r}, not an id of suite "
                                  f"{suite.name!r}'s label space")
    if not isinstance(spec.source, Source) or not (spec.source.folder or spec.source.archives or spec.source.manual):
        raise PluginError(f"{what}: source: expected Source(folder=PATH), archives or manual instructions "
                          "(rib generates only its own synthetic datasets)")
    return spec


def dataset_origin(suite: str, name: str) -> Plugin | None:
    return _datasets.get(suite, {}).get(name, (None, None))[1]


# ----------------------------------------------------------------------------------------------
# Tests: the registry as it was
# ----------------------------------------------------------------------------------------------
def snapshot() -> Callable[[], None]:
    """Save the registries; the returned function restores them (tests register and forget)."""
    from .methods import METHODS

    saved = (dict(METHODS), dict(_loaded), {k: set(v) for k, v in _made.items()}, _entry_points_loaded,
             dict(_method_origin), {k: dict(v) for k, v in _models.items()},
             {k: dict(v) for k, v in _datasets.items()})

    def restore() -> None:
        global _entry_points_loaded
        methods, loaded_, made, eps, origin, models_, datasets = saved
        METHODS.clear()
        METHODS.update(methods)
        for target, value in ((_loaded, loaded_), (_made, made), (_method_origin, origin), (_models, models_),
                              (_datasets, datasets)):
            target.clear()
            target.update(value)
        _entry_points_loaded = eps
        _bump()

    return restore
