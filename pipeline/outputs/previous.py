"""An incremental run's previous output: committed, made with this configuration, and what it holds.

``output.previous`` names the output a run builds on (the night before). It must be committed
(``_SUCCESS``): an output with parts but no manifest may be half written, so it is refused.
It must have been made with this run's config hash (model, weights' bytes, preprocessing,
precision, inputs): rows made otherwise are not this run's results, so a full run is needed;
``output.previous_other_config: recompute`` accepts it and computes every input instead.
Nothing at all there fails the run (``output.previous_missing: fail``, the default: a typo
must not quietly cost a full run), or runs it in full (``full_run``, the chart's first night).

:class:`Previous` is the one way the carry (:mod:`pipeline.outputs.carry`) reads a previous
output: its parts' names, each part's schema, row count and record batches, a whole part
copied, and, for an output written before rows held their ``fingerprint``, the fingerprints
its ``_inputs.parquet`` recorded. Another kind of previous output (a table snapshot) is
another implementation of these few methods.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import ConfigError
from pipeline.inputs.fingerprints import STAMP_COLUMNS
from pipeline.outputs.layout import DATA_DIR, INPUTS, MANIFEST, RUN_STATE, OutputLocation
from pipeline.schema import FINGERPRINT_FIELD

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.config import Config
    from pipeline.outputs.tables.previous_table import TablePrevious

KEY = "output.previous"
#: What output.previous names: a committed folder, or a table's run (its rows streamed, never copied whole).
PreviousOutput: TypeAlias = "Previous | TablePrevious"


@dataclass(frozen=True)
class Previous:
    """A committed output an incremental run carries rows from."""

    location: OutputLocation
    manifest: dict[str, Any]

    #: Its parts are files a carry may copy whole (a table's rows are streamed instead).
    copies_whole_parts = True

    @property
    def uri(self) -> str:
        """The previous output's URI, normalised."""
        return self.location.uri

    def parts(self) -> list[str]:
        """Its part files, as its manifest lists them (names relative to the output)."""
        return [str(item["path"]) for item in self.manifest.get("layout", {}).get("files", [])]

    def part_schema(self, part: str) -> pa.Schema:
        """A part's columns (an output written before rows held their fingerprint lacks it)."""
        with self._reading(part) as handle:
            return pq.ParquetFile(handle).schema_arrow

    def rows(self) -> int:
        """How many rows it holds, as its manifest counts them (0: not counted)."""
        return int(self.manifest.get("counts", {}).get("inputs", 0))

    def batches(self, part: str, columns: list[str] | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """A part's rows, ``batch_rows`` at a time: never the whole part.

        ``columns``: only those of these the part has (None: all).
        """
        with self._reading(part) as handle:
            source = pq.ParquetFile(handle)
            names = source.schema_arrow.names
            wanted = None if columns is None else [name for name in columns if name in names]
            yield from source.iter_batches(batch_size=batch_rows, columns=wanted)

    def copy_part(self, part: str, target: OutputLocation, name: str) -> None:
        """A whole part into ``target`` as ``name``: server-side on S3 (s3fs's copy), else streamed."""
        source = self.location.path_of(part)
        with storage.translate_errors("copy a previous part to", target.uri_of(name), target.storage_config):
            if storage.scheme_of(self.uri) == storage.scheme_of(target.uri):
                target.fs.copy(source, target.path_of(name))
                return
            with (
                self.location.fs.open(source, "rb") as reader,
                target.fs.open(target.path_of(name), "wb") as out,
            ):
                while chunk := reader.read(8 << 20):
                    out.write(chunk)

    def recorded_fingerprints(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """``row_id``, ``fingerprint`` from its ``_inputs.parquet``, for parts whose rows lack theirs.

        Empty where its listing gave no stamps (a manifest's inputs): nothing is found unchanged.
        """
        with self._reading(INPUTS) as handle:
            inputs = pq.ParquetFile(handle)
            if not set(STAMP_COLUMNS) <= set(inputs.schema_arrow.names):
                return
            for batch in inputs.iter_batches(batch_size=batch_rows, columns=["row_id", *STAMP_COLUMNS]):
                size = pc.cast(batch.column("size"), pa.string())
                print_ = pc.binary_join_element_wise(size, batch.column("version"), ":")
                yield pa.record_batch(
                    [batch.column("row_id"), print_], names=["row_id", FINGERPRINT_FIELD.name]
                )

    @contextmanager
    def _reading(self, name: str) -> Iterator[Any]:
        """The file ``name`` under the previous output, open for reading; storage errors translated."""
        location = self.location
        with (
            storage.translate_errors("read", location.uri_of(name), location.storage_config),
            location.fs.open(location.path_of(name), "rb") as handle,
        ):
            yield handle


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
        return None, nothing_there(config, location.uri, "no _SUCCESS")
    manifest = location.read_json(MANIFEST)
    refuse_random_weights(config, manifest, settings.previous)
    if (why := other_config(config, location.uri, manifest.get("config_hash"), config_hash)) is not None:
        return None, why
    return Previous(location, manifest), None


def refuse_random_weights(config: Config, manifest: dict[str, Any], previous: str) -> None:
    """Refuse to carry into or from a run on random weights (``model.random_init``).

    Every random-init run's weights "checksum" is the same word, so two different random models
    share a config hash: their rows would be carried as if one model had made both.
    """
    into = config.model.random_init
    if into or manifest.get("model", {}).get("random_init"):
        which = "this run uses" if into else "it was made with"
        raise ConfigError(
            KEY,
            previous,
            f"{which} random weights (model.random_init): random models all share one weights "
            "checksum, so their rows cannot be told apart and are never carried; drop "
            "output.previous for a full run, or set model.weights",
        )


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
