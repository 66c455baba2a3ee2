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
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError
from pipeline.inputs.fingerprints import STAMP_COLUMNS
from pipeline.outputs.layout import DATA_DIR, INPUTS, MANIFEST, RUN_STATE, OutputLocation

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.config import Config
    from pipeline.outputs.tables.previous_table import TablePrevious

KEY = "output.previous"
#: What output.previous names: a committed folder, or a table's run (its rows streamed, never copied whole).
PreviousOutput: TypeAlias = "Previous | TablePrevious"
FILTER_BATCH_ROWS = 4096  # rows per batch when a part is filtered: a few MB of predictions at most


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

    def ids_and_statuses(self, part: str) -> pa.Table:
        """A part's ``row_id`` and ``status`` columns, all the carry reads to decide."""
        with self.location.fs.open(self.location.path_of(part), "rb") as handle:
            return pq.read_table(handle, columns=["row_id", "status"])

    def batches(self, part: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """A part's schema and its rows, batch by batch (the file open while they are read)."""
        with self.location.fs.open(self.location.path_of(part), "rb") as handle:
            schema = pq.ParquetFile(handle).schema_arrow

        def rows() -> Iterator[pa.RecordBatch]:
            with self.location.fs.open(self.location.path_of(part), "rb") as reader:
                yield from pq.ParquetFile(reader).iter_batches(batch_size=FILTER_BATCH_ROWS)

        return schema, rows()

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
    another configuration and ``output.previous_other_config`` is ``refuse``. A table's run
    (``iceberg:ns.table[@run]``, a ``.lance`` URI) is found, refused and accepted alike by
    :func:`pipeline.outputs.tables.previous_table.find_table_previous`, which uses the helpers
    below (so it, not this module, is what the job calls: no import cycle).
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
        return None, nothing_there(config, location.uri, "no _SUCCESS")
    manifest = location.read_json(MANIFEST)
    if (why := other_config(config, location.uri, manifest.get("config_hash"), config_hash)) is not None:
        return None, why
    return Previous(location, manifest), None


def nothing_there(config: Config, where: str, what: str) -> str:
    """Why a run with no previous output runs in full, or ConfigError (``output.previous_missing: fail``)."""
    if config.output.previous_missing == "fail":
        raise ConfigError(
            KEY,
            config.output.previous,
            f"nothing is there ({what}); drop output.previous for a full run, or set "
            "output.previous_missing=full_run to run in full when the previous output is absent",
        )
    return f"no output at {where} (output.previous_missing=full_run): every input is computed"


def other_config(config: Config, where: str, recorded: str | None, config_hash: str) -> str | None:
    """None if the previous output was made with ``config_hash``; else why every input is computed.

    Raises ConfigError unless ``output.previous_other_config`` is ``recompute``.
    """
    if recorded == config_hash:
        return None
    if config.output.previous_other_config == "refuse":
        raise ConfigError(
            KEY,
            config.output.previous,
            f"it was made with another configuration (config hash {recorded}, "
            f"this run's {config_hash}: model, weights, preprocessing, precision or inputs "
            "differ), so its rows are not this run's results: a full run is needed. Drop "
            "output.previous, or set output.previous_other_config=recompute to compute every input",
        )
    return (
        f"{where} was made with another configuration (output.previous_other_config="
        "recompute): every input is computed, nothing carried"
    )
