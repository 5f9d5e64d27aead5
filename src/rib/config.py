"""Loading and validating params.yaml.

Validation has two layers: the JSON Schema in workflow/schemas/params.schema.yaml (shape, types,
ranges, no unknown keys) and rib's registries (suite, model, method and dataset names). Any
problem is reported as one :class:`ConfigError` whose message is a single line naming the file
and the key, e.g. ``params.yaml: train.lr: expected a number, got 'fast'``.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .errors import RibError

DEFAULT_PARAMS = "params.yaml"
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "params.schema.yaml"


class ConfigError(RibError, ValueError):
    """A one-line, user-facing error about the configuration."""


@lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _typename(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "nothing"}.get(type(value), type(value).__name__)


def _expected(schema_type) -> str:
    names = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
             "array": "a list", "object": "a mapping"}
    if isinstance(schema_type, list):
        return " or ".join(names.get(t, t) for t in schema_type)
    return names.get(schema_type, str(schema_type))


def _format_schema_error(err) -> str:
    where = _key(err.absolute_path)
    v = err.validator
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        name = extra[0] if extra else "?"
        full = f"{where}.{name}" if err.absolute_path else name
        hint = difflib.get_close_matches(name, allowed, n=1)
        tail = f"; did you mean '{hint[0]}'?" if hint else (f"; allowed: {', '.join(allowed)}" if allowed else "")
        return f"{full}: unknown key{tail}"
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        full = f"{where}.{missing}" if err.absolute_path else missing
        return f"{full}: missing required key"
    if v == "type":
        return f"{where}: expected {_expected(err.validator_value)}, got {_typename(err.instance)} {err.instance!r}"
    if v == "enum":
        options = ", ".join(repr(o) for o in err.validator_value)
        return f"{where}: {err.instance!r} is not one of {options}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": "at least", "exclusiveMinimum": "greater than", "maximum": "at most",
                 "exclusiveMaximum": "less than"}
        return f"{where}: expected a value {words[v]} {err.validator_value}, got {err.instance!r}"
    if v in ("minItems", "minProperties"):
        if err.validator_value > 1:
            return f"{where}: expected at least {err.validator_value} entries, got {len(err.instance)}"
        return f"{where}: must not be empty"
    if v == "uniqueItems":
        return f"{where}: has duplicate entries"
    if v == "minLength":
        return f"{where}: must not be an empty string"
    return f"{where}: {err.message}"


def _close(name: str, options) -> str:
    hint = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(sorted(options))}"


def _check_names(params: dict) -> None:
    """Registry checks: every name in the grid must exist for the chosen suite."""
    from .data.suites import get_suite, suite_names
    from .models.registry import model_names

    if params["suite"] not in suite_names():
        raise ConfigError(f"suite: unknown suite {params['suite']!r}{_close(params['suite'], suite_names())}")
    synthetic = params["suite"] == "rib-mini"
    for section in ("synthetic", "pretrain"):
        if synthetic and section not in params:
            raise ConfigError(f"{section}: missing required key (suite {params['suite']!r} generates its data "
                              "and pretrains its models)")
    suite = get_suite(params)
    from . import grid
    from .errors import UnknownNameError
    from .models.registry import get_model

    known_models = model_names(params)
    slugs: dict[str, int] = {}
    for i, name in enumerate(params["grid"]["models"]):
        try:
            spec = get_model(name, params)
        except UnknownNameError as err:
            message = str(err)
            if message.startswith("unknown model"):
                message = f"unknown model {name!r}{_close(name, known_models)}"
            raise ConfigError(f"grid.models[{i}]: {message}") from None
        if spec.slug in slugs:
            raise ConfigError(f"grid.models[{i}]: {name!r} is the same model as grid.models[{slugs[spec.slug]}]")
        slugs[spec.slug] = i
    if params.get("local_models") and suite.synthetic:
        raise ConfigError(f"local_models: suite {suite.name!r} has its own label space; local models need imagenet-rib")
    from .plugins import model_origin

    for name in params.get("local_models") or {}:
        if model_origin(suite.name, name) is not None:
            raise ConfigError(f"local_models.{name}: also the name of a model of {model_origin(suite.name, name)}")
    if suite.synthetic:
        from .models.registry import MINI_ARCHS

        for i, arch in enumerate(params["pretrain"]["architectures"]):
            if arch not in MINI_ARCHS:
                raise ConfigError(f"pretrain.architectures[{i}]: unknown architecture {arch!r}{_close(arch, MINI_ARCHS)}")
        pretrained = pretrained_models(params)
        for i, name in enumerate(params["grid"]["models"]):
            if get_model(name, params).source == "pretrain" and name not in pretrained:  # plugins': fetched
                arch, _, corpus = name.partition(".")
                raise ConfigError(f"grid.models[{i}]: {name!r} is not pretrained by this configuration; add "
                                  f"{arch!r} to pretrain.architectures and {corpus!r} to pretrain.corpora")
    _check_methods(params)
    sources = suite.names("source")
    if params["grid"]["source"] not in sources:
        raise ConfigError(f"grid.source: {params['grid']['source']!r} is not a source dataset of suite "
                          f"{suite.name!r}{_close(params['grid']['source'], sources)}")
    shifts = suite.names("shift")
    for i, name in enumerate(params["grid"]["datasets"]):
        if name not in shifts:
            raise ConfigError(f"grid.datasets[{i}]: unknown dataset {name!r} for suite {suite.name!r}{_close(name, shifts)}")
    if len(params["grid"]["datasets"]) < 2:
        raise ConfigError("grid.datasets: at least 2 datasets are needed: a model fine-tuned on one is evaluated "
                          "out of distribution on the others")
    for i, name in enumerate(params["grid"].get("finetune_on") or ()):
        if name not in params["grid"]["datasets"]:
            raise ConfigError(f"grid.finetune_on[{i}]: {name!r} is not in grid.datasets")
    _check_classes(params, suite)
    ref = params["distance"]["reference"]
    if ref is not None and ref not in suite.datasets:
        raise ConfigError(f"distance.reference: unknown dataset {ref!r} for suite {suite.name!r}{_close(ref, suite.datasets)}")
    report = params["report"]
    if report["focus_dataset"] not in grid.finetune_datasets(params):
        raise ConfigError(f"report.focus_dataset: {report['focus_dataset']!r} is not a dataset the grid fine-tunes "
                          "on (grid.datasets, grid.finetune_on)")
    if report["focus_method"] not in params["grid"]["methods"]:
        raise ConfigError(f"report.focus_method: {report['focus_method']!r} is not in grid.methods")


def _check_classes(params: dict, suite) -> None:
    """data.classes: ids of the suite's label space, and every dataset of the grid keeps a class."""
    chosen = params["data"].get("classes")
    if not chosen:
        return
    space = set(suite.label_space)
    for i, wnid in enumerate(chosen):
        if wnid not in space:
            raise ConfigError(f"data.classes[{i}]: {wnid!r} is not in the label space of suite {suite.name!r}")
    for name in [params["grid"]["source"], *params["grid"]["datasets"]]:
        spec = suite.dataset(name)
        if spec.classes is not None and not spec.classes:
            raise ConfigError(f"data.classes: dataset {name!r} has none of these classes")


def _method_validator(name: str):

    from .methods import COMMON_OPTIONS, METHODS

    properties = {**schema()["$defs"]["schedule"]["properties"], **COMMON_OPTIONS}
    properties.update({k: {kk: vv for kk, vv in v.items() if kk not in ("default", "description", "reference")}
                       for k, v in METHODS[name].options.items()})
    # The schedule's settings refer to the params schema's $defs (positive_int): keep them reachable.
    return _validator_class()({"type": "object", "additionalProperties": False, "properties": properties,
                               "$defs": schema()["$defs"]})


def _check_methods(params: dict) -> None:
    """Every methods entry against its method's settings; names between entries must resolve."""
    from jsonschema.exceptions import best_match

    from .methods import METHODS, PRETRAINED_INGREDIENT, entry_config, entry_info, init_entry

    entries = params["methods"]
    if PRETRAINED_INGREDIENT in entries:
        raise ConfigError(f"methods.{PRETRAINED_INGREDIENT}: reserved for the pretrained model (its cells and, among "
                          "a soup's ingredients, its weights); give the entry another name")
    for key, settings in entries.items():
        impl = settings.get("method", key)
        if impl not in METHODS:
            what = f"methods.{key}.method" if "method" in settings else f"methods.{key}"
            raise ConfigError(f"{what}: unknown method {impl!r}{_close(impl, METHODS)} (name an implementation "
                              "with `method:` to give an entry another name)")
        error = best_match(_method_validator(impl).iter_errors(settings))
        if error is not None:
            from .plugins import method_origin

            error.path.extendleft(["methods", key][::-1])
            origin = method_origin(impl)
            raise ConfigError(_format_schema_error(error) + (f" (method {impl!r} of {origin})" if origin else ""))
    for key in entries:
        info = entry_info(params, key)
        config = entry_config(params, key)
        start = init_entry(params, key)
        if start is not None:
            if start not in entries:
                raise ConfigError(f"methods.{key}.{info.init_from}: no methods entry {start!r}{_close(start, entries)}")
            if entry_info(params, start).kind != "train" or init_entry(params, start) is not None:
                raise ConfigError(f"methods.{key}.{info.init_from}: {start!r} must be a training method that "
                                  "starts from the pretrained model")
        for setting in info.ingredients_from:
            for name in ([config[setting]] if isinstance(config[setting], str) else config[setting]):
                if name == PRETRAINED_INGREDIENT:
                    if not info.accepts_pretrained:
                        raise ConfigError(f"methods.{key}.{setting}: {config['method']} cannot take the pretrained "
                                          "weights as an ingredient; name fine-tuned entries")
                    continue
                if name not in entries:
                    raise ConfigError(f"methods.{key}.{setting}: no methods entry {name!r}{_close(name, entries)}")
                part = entry_info(params, name)
                if part.kind != "train" or not part.plain_checkpoint:
                    raise ConfigError(f"methods.{key}.{setting}: {name!r} does not make a plain fine-tuned model "
                                      "(weight-space methods need checkpoints of the pretrained architecture)")
        if config.get("reference") is not None:
            from .data.suites import get_suite

            known = get_suite(params).datasets
            if config["reference"] not in known:
                raise ConfigError(f"methods.{key}.reference: unknown dataset {config['reference']!r}"
                                  f"{_close(config['reference'], known)}")
        if "alphas" in info.options and config["alpha"] not in config["alphas"]:
            raise ConfigError(f"methods.{key}.alpha: {config['alpha']} is not one of alphas {config['alphas']}")
    for i, name in enumerate(params["grid"]["methods"]):
        if name not in entries:
            raise ConfigError(f"grid.methods[{i}]: no methods entry {name!r}{_close(name, entries)} "
                              "(add it under 'methods', {} for the defaults)")


def _validator_class():
    from jsonschema import Draft202012Validator, validators

    # JSON Schema counts 1.0 as an integer; a count, seed or size written as 1.0 is a mistake here.
    strict_int = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return validators.extend(Draft202012Validator, type_checker=strict_int)


def validate(params: Any, source: str = DEFAULT_PARAMS) -> dict:
    """Validate a parsed configuration; returns it unchanged or raises a one-line ConfigError."""
    from jsonschema.exceptions import best_match

    if not isinstance(params, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {_typename(params)}")
    validator = _validator_class()(schema())
    error = best_match(validator.iter_errors(params))
    if error is not None:
        raise ConfigError(f"{source}: {_format_schema_error(error)}")
    try:
        from . import plugins

        plugins.load(params)  # entry points and params' plugins: the datasets, models and methods they add
        _check_names(params)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return params


def load(path: str | os.PathLike = DEFAULT_PARAMS) -> dict:
    """Read and validate a params file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run from the project folder or pass --params)") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(err, 'problem', err)}") from None
    return validate(params, source=str(path))


def pretrained_models(params: dict) -> list[str]:
    """The rib-mini models the pipeline pretrains: every ARCHITECTURE.CORPUS of the pretrain lists."""
    pre = params["pretrain"]
    return [f"{arch}.{corpus}" for arch in pre["architectures"] for corpus in pre["corpora"]]


def method_schedule(params: dict, entry: str) -> dict:
    """Everything one methods entry runs with: the ``train`` schedule, the method's defaults, the
    entry's settings, plus ``method`` (the implementation) and ``entry`` (its name)."""
    from .methods import entry_config

    return entry_config(params, entry)


# robustness: effective robustness's settings, where params leave them out (rib.robustness).
ROBUSTNESS_DEFAULTS = {"scale": "logit", "snapshots": 3, "reference": None}


def robustness_settings(params: dict) -> dict:
    return {**ROBUSTNESS_DEFAULTS, **(params.get("robustness") or {})}


def snapshot_epochs(params: dict, corpus: str) -> list[int]:
    """The intermediate epochs at which pretraining on ``corpus`` keeps a snapshot of the model:
    ``robustness.snapshots`` of them, evenly spread before the last (fewer where pretraining has
    fewer epochs)."""
    count = robustness_settings(params)["snapshots"]
    epochs = params["pretrain"]["epochs"][corpus]
    return sorted({max(1, round(epochs * k / (count + 1))) for k in range(1, count + 1)} - {epochs})


JOB_KINDS = ("generate", "prepare", "cache", "pretrain", "finetune", "evaluate", "combine", "distance")
DEFAULT_RESOURCES = {"gpus": 0, "mem_mb": 4000, "runtime": 60}


def job_resources(params: dict, kind: str) -> dict:
    """What one job of ``kind`` asks a cluster for: built-in defaults, then ``resources.default``,
    then ``resources.<kind>`` (gpus, cpus, mem_mb, runtime in minutes; cpus absent = threads)."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}")
    section = params.get("resources") or {}
    return {**DEFAULT_RESOURCES, **(section.get("default") or {}), **(section.get(kind) or {})}
