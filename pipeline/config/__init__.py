"""The job's configuration: one loader (YAML, then environment, then ``--set``), validated before any work.

:func:`load_config` (:mod:`~pipeline.config.loader`) builds a :class:`Config` from its sections
(:mod:`~pipeline.config.sections`, one pydantic model each), typing the environment's and
``--set``'s text by the schema (:mod:`~pipeline.config.overrides`), then checks what needs more
than one key (:mod:`~pipeline.config.checks`, :mod:`~pipeline.config.worker_groups`). The config
hash a resume must match is :mod:`~pipeline.config.hashing`. Everything here imports only
:mod:`pipeline.errors`: every other layer may read the config.
"""

from pipeline.config.loader import dump_yaml, load_config
from pipeline.config.overrides import env_overrides
from pipeline.config.sections import (
    DEFAULT_ALLOWED_SCHEMES,
    DEFAULT_EXTENSIONS,
    RESERVED_COLUMNS,
    Config,
    HttpConfig,
    InferenceConfig,
    InputConfig,
    InputScheme,
    JobConfig,
    LoggingConfig,
    MetricsConfig,
    ModelConfig,
    ModelEntry,
    OutputConfig,
    PreprocessConfig,
    ResourcesConfig,
    StorageConfig,
)

__all__ = [
    "DEFAULT_ALLOWED_SCHEMES",
    "DEFAULT_EXTENSIONS",
    "RESERVED_COLUMNS",
    "Config",
    "HttpConfig",
    "InferenceConfig",
    "InputConfig",
    "InputScheme",
    "JobConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "ModelEntry",
    "OutputConfig",
    "PreprocessConfig",
    "ResourcesConfig",
    "StorageConfig",
    "dump_yaml",
    "env_overrides",
    "load_config",
]
