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
    from .methods import METHODS
    from .models.registry import model_names

    if params["suite"] not in suite_names():
        raise ConfigError(f"suite: unknown suite {params['suite']!r}{_close(params['suite'], suite_names())}")
    synthetic = params["suite"] == "rib-mini"
    for section in ("synthetic", "pretrain"):
        if synthetic and section not in params:
            raise ConfigError(f"{section}: missing required key (suite {params['suite']!r} generates its data "
                              "and pretrains its models)")
    suite = get_suite(params)
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
    if suite.synthetic:
        from .models.registry import MINI_ARCHS

        for i, arch in enumerate(params["pretrain"]["architectures"]):
            if arch not in MINI_ARCHS:
                raise ConfigError(f"pretrain.architectures[{i}]: unknown architecture {arch!r}{_close(arch, MINI_ARCHS)}")
        pretrained = pretrained_models(params)
        for i, name in enumerate(params["grid"]["models"]):
            if name not in pretrained:
                arch, _, corpus = name.partition(".")
                raise ConfigError(f"grid.models[{i}]: {name!r} is not pretrained by this configuration; add "
                                  f"{arch!r} to pretrain.architectures and {corpus!r} to pretrain.corpora")
    for key in params["methods"]:
        if key not in METHODS:
            raise ConfigError(f"methods.{key}: unknown method {key!r}{_close(key, METHODS)}")
    for i, name in enumerate(params["grid"]["methods"]):
        if name not in METHODS:
            raise ConfigError(f"grid.methods[{i}]: unknown method {name!r}{_close(name, METHODS)}")
        if name not in params["methods"]:
            raise ConfigError(f"grid.methods[{i}]: method {name!r} has no entry under 'methods' (use {{}} for defaults)")
    sources = suite.names("source")
    if params["grid"]["source"] not in sources:
        raise ConfigError(f"grid.source: {params['grid']['source']!r} is not a source dataset of suite "
                          f"{suite.name!r}{_close(params['grid']['source'], sources)}")
    shifts = suite.names("shift")
    for i, name in enumerate(params["grid"]["datasets"]):
        if name not in shifts:
            raise ConfigError(f"grid.datasets[{i}]: unknown dataset {name!r} for suite {suite.name!r}{_close(name, shifts)}")
    report = params["report"]
    if report["focus_dataset"] not in params["grid"]["datasets"]:
        raise ConfigError(f"report.focus_dataset: {report['focus_dataset']!r} is not in grid.datasets")
    if report["focus_method"] not in params["grid"]["methods"]:
        raise ConfigError(f"report.focus_method: {report['focus_method']!r} is not in grid.methods")


def validate(params: Any, source: str = DEFAULT_PARAMS) -> dict:
    """Validate a parsed configuration; returns it unchanged or raises a one-line ConfigError."""
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import best_match

    if not isinstance(params, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {_typename(params)}")
    # JSON Schema counts 1.0 as an integer; a count, seed or size written as 1.0 is a mistake here.
    strict_int = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    validator = validators.extend(Draft202012Validator, type_checker=strict_int)(schema())
    error = best_match(validator.iter_errors(params))
    if error is not None:
        raise ConfigError(f"{source}: {_format_schema_error(error)}")
    try:
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


def method_schedule(params: dict, method: str) -> dict:
    """The fine-tuning schedule of one method: ``train`` with the method's overrides applied."""
    return {**params["train"], **params["methods"].get(method, {})}
