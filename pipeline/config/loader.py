"""The one configuration loader: YAML file, then environment, then ``--set``.

Precedence, lowest first: the defaults below, the YAML file, environment
variables named ``PIPELINE_<SECTION>__<KEY>`` (``__`` separates nesting, e.g.
``PIPELINE_OUTPUT__URI=s3://bucket/run``), then ``--set section.key=value``.
Everything is validated before any Ray work; the first problem becomes a
:class:`~pipeline.errors.ConfigError` naming the key, the value and what is allowed.

"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config.checks import check_semantics
from pipeline.config.overrides import apply, naming_variables, validation_error, yaml_problem
from pipeline.config.sections import Config
from pipeline.errors import ConfigError


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Build and validate the configuration; raise :class:`ConfigError` on the first problem.

    Later sources win: the file, the environment, ``overrides`` (``--set``), then ``flags``
    (command-line options such as ``--run-id``, already typed, by dotted key). Every value
    is validated the same way, whatever its source.
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError("--config", str(path), "expected an existing YAML file")
        try:
            with file.open(encoding="utf-8") as stream:  # PyYAML's error then names the file
                loaded = yaml.safe_load(stream)
        except yaml.YAMLError as exc:
            problem = yaml_problem(exc, str(path))
            raise ConfigError("--config", str(path), f"not valid YAML: {problem}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("--config", str(path), "expected a mapping of sections at the top")
        data = loaded or {}
    env = os.environ if environ is None else environ
    from_env = apply(data, Config, env, overrides, flags or {})
    with naming_variables(from_env):
        try:
            config = Config.model_validate(data)
        except ValidationError as exc:
            raise validation_error(Config, exc) from None
        check_semantics(config)
    return config


def dump_yaml(config: Config) -> str:
    """The resolved configuration as YAML (for ``pipeline config --show``)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
