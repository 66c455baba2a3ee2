"""Several models over one decode (``models:``): each model's own config, as a single-model run has it.

A run of several models is, per model, the run a single-model config would make: its ``model:``
section (the entry without ``output`` and ``precision``), the shared input and preprocessing, its
precision, and ``output.uri/<output>`` as its output. :func:`model_configs` builds those configs,
so each model's output carries exactly the config hash its single-model run would (a later
single-model run, ``output.previous`` and ``compare`` see the same hash). The run as a whole is
hashed with its ``models`` list (:mod:`pipeline.config.hashing`).
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config.sections import Config

#: ModelEntry keys that are not ``model:`` keys.
ENTRY_ONLY_KEYS = ("output", "precision")


def is_multi(config: Config) -> bool:
    """Whether ``models:`` names the models (else the one ``model:`` section)."""
    return bool(config.models)


def output_uri(base: str, name: str) -> str:
    """Where model output ``name`` goes: a folder under ``output.uri``."""
    return posixpath.join(base.rstrip("/"), name) if "://" in base else posixpath.join(base, name)


def model_configs(config: Config) -> list[tuple[str, Config]]:
    """(output name, the single-model config) per model; a single-model config is ``[("", config)]``."""
    from pipeline.config.sections import Config

    if not is_multi(config):
        return [("", config)]
    data = config.to_dict()
    found = []
    for entry in config.models:
        model = entry.model_dump(mode="json", exclude=set(ENTRY_ONLY_KEYS))
        inference = {**data["inference"], "precision": entry.precision or config.inference.precision}
        output = {**data["output"], "uri": output_uri(config.output.uri, entry.output)}
        single = {**data, "models": [], "model": model, "inference": inference, "output": output}
        found.append((entry.output, Config.model_validate(single)))
    return found
