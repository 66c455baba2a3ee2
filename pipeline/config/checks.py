"""Checks that need more than one key: the input rules, the push credentials, the model and limits.

Run by :func:`pipeline.config.load_config` after each section validated on its own; the
declared worker groups check themselves (:mod:`pipeline.config.worker_groups`). Each problem is a
:class:`~pipeline.errors.ConfigError` naming the key and the value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.config.sections import RESERVED_COLUMNS
from pipeline.config.worker_groups import check_declared
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Set as AbstractSet

    from pipeline.config.sections import Config, InputConfig, MetricsConfig


KEY = "input.passthrough_columns"


def check_input(source: InputConfig, reserved: AbstractSet[str]) -> None:
    """Refuse carried columns that cannot be carried (``reserved``: the names the output uses)."""
    if source.version_column is not None and not source.is_manifest:
        raise ConfigError(
            "input.version_column",
            source.version_column,
            f"needs a .parquet or .csv manifest as input.uri; {source.uri} is listed, and its "
            "listing gives each input's version (ETag or modification time) already",
        )
    names = source.passthrough_columns
    if names and not source.is_manifest and source.format in ("auto", "files"):
        raise ConfigError(
            KEY,
            names,
            f"needs a .parquet or .csv manifest as input.uri, or shards named by input.format "
            f"(parquet, webdataset); {source.uri} is a directory or prefix, whose listing of files "
            "has no columns to carry",
        )
    for index, name in enumerate(names):
        if not name.strip() or name in names[:index]:
            raise ConfigError(KEY, name, "each name must be a manifest or shard column, given once")
        if name in reserved:
            raise ConfigError(
                KEY,
                name,
                f"the output has a column {name!r} already (names the pipeline uses: "
                f"{', '.join(sorted(reserved))}); rename it in the manifest",
            )
        if source.is_manifest and name == source.manifest_column:
            raise ConfigError(
                KEY,
                name,
                "it is input.manifest_column, written as the output's uri column (signed "
                "query strings masked); carry a key column of your own to join on",
            )
        if not source.is_manifest and name == source.image_column:
            raise ConfigError(KEY, name, "it is input.image_column, the images' bytes: they are not carried")


def check_push_auth(settings: MetricsConfig) -> None:
    """Raise :class:`ConfigError` naming the key when the credential settings do not fit together."""
    url, token_file = settings.pushgateway_url, settings.pushgateway_token_file
    username_file, password_file = settings.pushgateway_username_file, settings.pushgateway_password_file
    if (username_file is None) != (password_file is None):
        missing = "pushgateway_password_file" if password_file is None else "pushgateway_username_file"
        raise ConfigError(
            f"metrics.{missing}", None, "basic auth needs both the username and the password file"
        )
    if token_file is not None and username_file is not None:
        raise ConfigError(
            "metrics.pushgateway_token_file", token_file, "set either the token file or the basic-auth files"
        )
    if url is None and (token_file or username_file):
        raise ConfigError(
            "metrics.pushgateway_url", None, "credentials are set: name the Pushgateway to push to"
        )


def check_table(config: Config) -> None:
    """A table format names its table; an index needs Lance and vectors."""
    output = config.output
    if output.format != "parquet" and not output.table:
        what = "a catalog identifier (namespace.name)" if output.format == "iceberg" else "a dataset URI"
        raise ConfigError("output.table", output.table, f"output.format={output.format} needs {what}")
    if output.index != "none" and (output.format != "lance" or config.model.task != "embed"):
        raise ConfigError(
            "output.index",
            output.index,
            f"needs output.format=lance and model.task=embed (not {output.format}, {config.model.task})",
        )
    if output.format == "iceberg" and "." not in str(output.table).strip("."):
        raise ConfigError("output.table", output.table, "an Iceberg identifier is namespace.name")


def check_model_source(config: Config, key: str = "model") -> None:
    """What each ``model.source`` needs from the other keys (docs/weights.md); ``key``: the section's name."""
    model, preprocess = config.model, config.preprocess
    hub_cache = model.source == "huggingface" and not model.random_init  # model.name: a cached hub id
    if model.weights is None and not model.random_init and not hub_cache:
        raise ConfigError(
            f"{key}.weights",
            None,
            "set a weights file (.safetensors or .pt) or model.random_init: true for a demo",
        )
    if model.weights is not None and model.random_init:
        raise ConfigError(f"{key}.random_init", value=True, allowed="must be false when model.weights is set")
    if model.random_init and model.source in ("huggingface", "exported"):
        raise ConfigError(
            f"{key}.random_init",
            value=True,
            allowed=f"model.source {model.source} has no architecture to initialise: set model.weights",
        )
    if model.source == "exported":  # a graph says nothing about the pixels it was trained on
        for name in ("resize_size", "crop_size", "mean", "std"):
            if getattr(preprocess, name) is None:
                raise ConfigError(
                    f"preprocess.{name}",
                    None,
                    "model.source exported needs its preprocessing spelled out: set preprocess."
                    "resize_size, crop_size, mean and std (docs/weights.md)",
                )
    if model.source == "open_clip" and model.task == "classify" and model.labels is None:
        raise ConfigError(
            f"{key}.labels",
            None,
            "model.source open_clip classifies zero-shot: name a file of labels, one a line, "
            "each put into model.prompt_template (or use model.task: embed)",
        )


#: What a run of several models does not do yet: (key, its single-model value, why).
MULTI_UNSUPPORTED = (
    ("output.previous", None, "incremental runs"),
    ("output.format", "parquet", "table outputs"),
    ("preprocess.decode_device", "cpu", "decoding on the GPU"),
)


def check_models(config: Config) -> None:
    """``models:``: each entry as a ``model:`` section, output names unique, only what the run supports."""
    from pipeline.config.sections import ModelConfig

    if not config.models:
        if config.resources.model_groups:
            raise ConfigError(
                "resources.model_groups", config.resources.model_groups, "set only with models:"
            )
        return
    if config.model != ModelConfig():
        raise ConfigError("model", config.model.name, "leave model: out when models: names the models")
    if config.input.is_sharded:
        raise ConfigError("input.format", config.input.format, "models: runs over files or a manifest only")
    for key, default, what in MULTI_UNSUPPORTED:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value != default:
            raise ConfigError(key, value, f"models: does not support {what} yet; run each model alone")
    seen: set[str] = set()
    for index, entry in enumerate(config.models):
        if entry.output in seen:
            raise ConfigError(f"models[{index}].output", entry.output, "each model needs its own output name")
        seen.add(entry.output)
        single = ModelConfig(**entry.model_dump(exclude={"output", "precision"}))
        check_model_source(config.model_copy(update={"model": single}), f"models[{index}]")
    check_model_groups(config.resources.model_groups, [entry.output for entry in config.models])


def check_model_groups(groups: list[list[str]], outputs: list[str]) -> None:
    """``resources.model_groups``: non-empty pools naming every ``models[].output`` exactly once."""
    if not groups:
        return
    named = [name for group in groups for name in group]
    key = "resources.model_groups"
    if any(not group for group in groups):
        raise ConfigError(key, groups, "each pool names at least one models[].output")
    for name in named:
        if name not in outputs:
            raise ConfigError(key, name, f"a pool names models[].output values only: {', '.join(outputs)}")
        if named.count(name) > 1:
            raise ConfigError(key, name, "each model is in exactly one pool")
    missing = [name for name in outputs if name not in named]
    if missing:
        raise ConfigError(key, groups, f"every model is in a pool; missing: {', '.join(missing)}")


def check_semantics(config: Config) -> None:
    """Checks that need more than one field or a look at the outside world."""
    check_models(config)
    if not config.models:  # else each entry was checked as its own model: section
        check_model_source(config)
    actors = config.resources
    if actors.min_actors and actors.max_actors and actors.min_actors > actors.max_actors:
        allowed = f"must be <= resources.max_actors ({actors.max_actors})"
        raise ConfigError("resources.min_actors", actors.min_actors, allowed)
    check_input(config.input, RESERVED_COLUMNS)
    check_previous(config)
    check_table(config)
    check_push_auth(config.metrics)
    check_declared(actors, config.inference.device)
    preprocess = config.preprocess
    if preprocess.crop_size and preprocess.resize_size and preprocess.crop_size > preprocess.resize_size:
        raise ConfigError(
            "preprocess.crop_size",
            preprocess.crop_size,
            f"must be <= preprocess.resize_size ({preprocess.resize_size})",
        )


def check_previous(config: Config) -> None:
    """``output.previous`` is another output than the one written (read while this one is written)."""
    previous = config.output.previous
    if previous is not None and _same_place(previous, config.output.uri):
        raise ConfigError(
            "output.previous",
            previous,
            "must be another output than output.uri: an incremental run writes a new snapshot "
            "beside the one it builds on (e.g. one folder per night)",
        )


def _same_place(first: str, second: str) -> bool:
    """Whether two output URIs name one place (local paths made absolute; config sits below storage)."""
    from pathlib import Path

    def plain(uri: str) -> str:
        uri = uri.removeprefix("file://")
        return uri.rstrip("/") if "://" in uri else str(Path(uri).resolve())

    return plain(first) == plain(second)
