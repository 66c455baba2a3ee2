"""An incremental run's previous output: committed, made with this configuration, and what it holds.

``output.previous`` names the output a run builds on (the night before). It must be committed
(``_SUCCESS``): an output with parts but no manifest may be half written, so it is refused.
It must have been made with this run's config hash (model, weights' bytes, preprocessing,
precision, inputs): rows made otherwise are not this run's results, so a full run is needed;
``output.previous_other_config: recompute`` accepts it and computes every input instead.
Nothing at all there fails the run (``output.previous_missing: fail``, the default: a typo
must not quietly cost a full run), or runs it in full (``full_run``, the chart's first night).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError
from pipeline.inputs.fingerprints import STAMP_COLUMNS
from pipeline.outputs.layout import DATA_DIR, INPUTS, MANIFEST, RUN_STATE, OutputLocation

if TYPE_CHECKING:
    from pipeline.config import Config

KEY = "output.previous"


@dataclass(frozen=True)
class Previous:
    """A committed output an incremental run carries rows from."""

    location: OutputLocation
    manifest: dict[str, Any]

    @property
    def uri(self) -> str:
        """The previous output's URI, normalised."""
        return self.location.uri

    def parts(self) -> list[str]:
        """Its part files, as its manifest lists them (names relative to the output)."""
        return [str(item["path"]) for item in self.manifest.get("layout", {}).get("files", [])]

    def inputs(self) -> pa.Table:
        """Its ``_inputs.parquet``: row id, and size and version where its listing gave them."""
        with self.location.fs.open(self.location.path_of(INPUTS), "rb") as handle:
            names = pq.ParquetFile(handle).schema_arrow.names
        columns = ["row_id", *(name for name in STAMP_COLUMNS if name in names)]
        return self.location.read_table(INPUTS, columns)


def find_previous(config: Config, config_hash: str) -> tuple[Previous | None, str | None]:
    """The previous output to carry rows from, or None and why this run is a full one.

    Raises :class:`ConfigError` (exit 2, naming ``output.previous``) when it is not committed,
    when nothing is there and ``output.previous_missing`` is ``fail``, and when it was made with
    another configuration and ``output.previous_other_config`` is ``refuse``.
    """
    settings = config.output
    if settings.previous is None:
        return None, None
    location = OutputLocation.open(settings.previous, config.storage)
    if not location.exists(MANIFEST):
        if location.exists(DATA_DIR) or location.exists(RUN_STATE):
            raise ConfigError(
                KEY,
                settings.previous,
                "it is not committed (parts but no _SUCCESS): an incremental run builds only on a "
                "committed output; finish that run first, or drop output.previous for a full run",
            )
        if settings.previous_missing == "fail":
            raise ConfigError(
                KEY,
                settings.previous,
                "nothing is there (no _SUCCESS); drop output.previous for a full run, or set "
                "output.previous_missing=full_run to run in full when the previous output is absent",
            )
        return (
            None,
            f"no output at {location.uri} (output.previous_missing=full_run): every input is computed",
        )
    manifest = location.read_json(MANIFEST)
    if manifest.get("config_hash") != config_hash:
        if settings.previous_other_config == "refuse":
            raise ConfigError(
                KEY,
                settings.previous,
                f"it was made with another configuration (config hash {manifest.get('config_hash')}, "
                f"this run's {config_hash}: model, weights, preprocessing, precision or inputs "
                "differ), so its rows are not this run's results: a full run is needed. Drop "
                "output.previous, or set output.previous_other_config=recompute to compute every input",
            )
        return None, (
            f"{location.uri} was made with another configuration (output.previous_other_config="
            "recompute): every input is computed, nothing carried"
        )
    return Previous(location, manifest), None
