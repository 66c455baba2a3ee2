"""The config's sources beyond the YAML file: ``PIPELINE_`` environment variables and ``--set``.

Each source becomes dotted keys set into the nested mapping the loader validates
(:func:`pipeline.config.load_config`); an override's text is typed by the schema's field.
The way back too: a validation error becomes the dotted key it concerns (:func:`validation_error`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

import yaml

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

ENV_PREFIX = "PIPELINE_"
ENV_NESTING = "__"
#: PIPELINE_ variables that are not config keys (read elsewhere).
OTHER_PIPELINE_ENV = frozenset({"PIPELINE_SECRETS"})


def parse_scalar(schema: type[BaseModel], dotted: str, text: str) -> Any:
    """An override's value typed by the schema: text for text keys, else YAML; ``null`` None."""
    if text.strip() in {"null", "~", ""}:
        return None
    if _is_text_field(schema, dotted):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _is_text_field(schema: type[BaseModel], dotted: str) -> bool:
    """True when the config key at ``dotted`` takes text only (``str`` or ``str | None``)."""
    model: Any = schema
    *sections, key = dotted.split(".")
    for section in sections:
        field = getattr(model, "model_fields", {}).get(section)
        if field is None:
            return False
        model = field.annotation
    field = getattr(model, "model_fields", {}).get(key)
    if field is None:
        return False
    annotation = field.annotation
    members = get_args(annotation) if get_origin(annotation) in {Union, UnionType} else (annotation,)
    return set(members) <= {str, type(None)}


def set_path(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set ``section.key`` in the nested mapping ``data``."""
    keys = [key for key in dotted.split(".") if key]
    if not keys:
        raise ConfigError(source, dotted, "expected section.key=value")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, child, f"'{key}' is not a section")
        node = child
    node[keys[-1]] = value


def stray_env_names(environ: Mapping[str, str]) -> list[str]:
    """``PIPELINE_`` variables that look meant for the config but are not read (one underscore)."""
    stray = (name for name in environ if name.startswith(ENV_PREFIX) and ENV_NESTING not in name)
    return sorted(set(stray) - OTHER_PIPELINE_ENV)


def _from_environ(schema: type[BaseModel], environ: Mapping[str, str]) -> list[tuple[str, Any]]:
    """``PIPELINE_OUTPUT__URI=x`` -> ``("output.uri", "x")``, typed by ``schema``, in a stable order."""
    overrides = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and ENV_NESTING in name:
            dotted = name[len(ENV_PREFIX) :].lower().replace(ENV_NESTING, ".")
            overrides.append((dotted, parse_scalar(schema, dotted, environ[name])))
    return overrides


def apply(
    data: dict[str, Any],
    schema: type[BaseModel],
    environ: Mapping[str, str],
    items: Sequence[str],
    flags: Mapping[str, Any],
) -> dict[str, str]:
    """Set into ``data``, later winning: the environment, ``--set`` items, then typed flags.

    Returns the dotted keys whose value is the environment's, each with its variable's name.
    """
    from_env = {}
    for dotted, value in _from_environ(schema, environ):
        set_path(data, dotted, value, "environment")
        from_env[dotted] = ENV_PREFIX + dotted.upper().replace(".", ENV_NESTING)
    for item in items:
        dotted, sep, text = item.partition("=")
        if not sep:
            raise ConfigError("--set", item, "expected section.key=value")
        set_path(data, dotted.strip(), parse_scalar(schema, dotted.strip(), text), "--set")
        from_env.pop(dotted.strip(), None)
    for dotted, value in flags.items():
        set_path(data, dotted, value, "flag")
        from_env.pop(dotted, None)
    return from_env


@contextmanager
def naming_variables(from_env: Mapping[str, str]) -> Iterator[None]:
    """A :class:`ConfigError` about a key the environment set names the variable (``apply``'s map)."""
    try:
        yield
    except ConfigError as exc:
        if exc.key not in from_env:
            raise
        raise ConfigError(exc.key, exc.value, exc.allowed, variable=from_env[exc.key]) from None


def yaml_problem(exc: Exception, path: str) -> str:
    """A YAML error in one line: the file, where, and what (PyYAML's own spans several lines)."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{path}{where}: {problem or str(exc).splitlines()[0]}"


def _field_path(schema: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[list[str], type[BaseModel]]:
    """The leading part of a pydantic error location that names config keys, and the model there.

    Union members (``int``, ``literal['auto']``) that pydantic appends are dropped.
    """
    from pydantic import BaseModel

    model: type[BaseModel] = schema
    path: list[str] = []
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        path.append(str(part))
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return path, model


def validation_error(schema: type[BaseModel], exc: ValidationError) -> ConfigError:
    """The first problem pydantic found, as a :class:`ConfigError` naming the dotted key and value."""
    errors = exc.errors()
    first = errors[0]
    path, model = _field_path(schema, first["loc"])
    if first["type"] == "extra_forbidden":
        key = ".".join([*path, str(first["loc"][-1])])
        allowed = ", ".join(sorted(model.model_fields))
        return ConfigError(key, first.get("input"), f"unknown key; allowed keys here: {allowed}")
    key = ".".join(path)
    if first["type"] == "missing":
        if path and path[-1] not in model.model_fields:  # a whole section: name its first key (input.uri)
            key = f"{key}.{next(iter(model.model_fields))}"
        return ConfigError(key, None, f"{key} is required")
    # A union field reports one error per member: say all of them.
    messages = [e["msg"] for e in errors if ".".join(_field_path(schema, e["loc"])[0]) == key]
    message = " or ".join(dict.fromkeys(m[:1].lower() + m[1:] for m in messages))
    return ConfigError(key, first.get("input"), message)


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, Any]]:
    """``PIPELINE_OUTPUT__URI=x`` -> ``("output.uri", "x")``, in a stable order."""
    from pipeline.config.sections import Config

    return _from_environ(Config, environ)
