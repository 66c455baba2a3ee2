"""The Lance target: the verified parts' rows written as fragments, then ONE version carrying the run id.

Lance keeps its own data files, so the parts are copied: read back part by part (the driver
holds one part at a time) into fragments of the dataset ``output.table``, which nothing
references until the commit. A crash before the commit leaves the dataset at its previous
version (the orphan fragments are unreferenced files, removed by Lance's cleanup). The commit is
a Lance transaction whose properties carry the run id and config hash, always an append: the
first run creates the dataset empty (version 1, no run id), so two first runs at once cannot
overwrite each other's rows. ``embedding`` is already a fixed-size
list of float32 (or float16): Lance's vector column as it is. With ``output.index`` set, an ANN
index on it is (re)built after the commit, covering every version's rows.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.errors import TableCommitRefusedError
from pipeline.outputs.tables.target import RUN_ID_PROPERTY, s3_endpoint
from pipeline.schema import EMBEDDING_COLUMN

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa

    from pipeline.config import Config, StorageConfig
    from pipeline.outputs.layout import OutputLocation

INDEX_TYPES = {"ivf_flat": "IVF_FLAT", "ivf_pq": "IVF_PQ"}
# Lance's Rust logger, read when lance is first imported: at its default it warns on stderr that
# the first run's dataset "will be created" (the expected case), and a clean run has no warning
# line. Errors still show; a LANCE_LOG set by the user wins.
os.environ.setdefault("LANCE_LOG", "error")


def storage_options(storage_config: StorageConfig) -> dict[str, str]:
    """Lance's object-store settings for ``storage``: endpoint, region; path-style, plain HTTP if so."""
    endpoint = s3_endpoint(storage_config)
    options = {f"aws_{key}": value for key, value in endpoint.items()}
    if "endpoint" in endpoint:  # a non-AWS endpoint (MinIO, a test server): path-style requests
        options["aws_virtual_hosted_style_request"] = "false"
        options["allow_http"] = str(endpoint["endpoint"].startswith("http://")).lower()
    if storage_config.anonymous:
        options["aws_skip_signature"] = "true"
    return options


def open_dataset(uri: str, storage_config: StorageConfig) -> Any:
    """The Lance dataset at ``uri`` (raises ``ValueError`` when there is none)."""
    import lance

    return lance.dataset(
        uri, storage_options=storage_options(storage_config) if storage.is_remote(uri) else None
    )


class LanceTarget:
    """The dataset ``output.table``: created by the first run, one version appended per run."""

    format = "lance"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = str(config.output.table)
        self.options = storage_options(config.storage) if storage.is_remote(self.name) else None

    def _dataset(self) -> Any | None:
        try:
            return open_dataset(self.name, self.config.storage)
        except (ValueError, FileNotFoundError):  # no dataset there yet
            return None

    def committed(self, run_id: str) -> int | None:
        """The version whose transaction carries ``run_id``."""
        dataset = self._dataset()
        return None if dataset is None else version_of(dataset, run_id)

    def commit(self, location: OutputLocation, files: list[str], properties: dict[str, str]) -> int:
        """Fragments from the parts, then one transaction carrying ``properties``; the new version."""
        from lance.dataset import LanceDataset, LanceOperation, Transaction
        from lance.fragment import write_fragments

        run_id = properties[RUN_ID_PROPERTY]
        dataset = self._dataset()
        if dataset is not None and (found := version_of(dataset, run_id)) is not None:
            raise TableCommitRefusedError(
                f"{self.name} already holds run {run_id} (version {found}); a run is committed once"
            )
        schema, batches = _parts(location, files)
        if dataset is None:
            dataset = self._create(schema)
        fragments = write_fragments(batches, self.name, schema=schema, storage_options=self.options)
        # An append from the version read: a later version another run committed meanwhile is
        # rebased onto by Lance (appends never conflict), so both runs' rows land.
        operation = LanceOperation.Append(fragments)
        transaction = Transaction(dataset.version, operation, transaction_properties=properties)
        committed = LanceDataset.commit(self.name, transaction, storage_options=self.options)
        version = int(committed.version)  # the run's; the index, if any, is the next
        self._index(committed)
        return version

    def _create(self, schema: pa.Schema) -> Any:
        """The dataset, created empty as its version 1, or as another run just created it.

        Never an overwrite carrying rows, nor one Lance may retry: Lance applies an overwrite
        over any version, so a run that found no dataset and committed over a version another
        run made a moment before would replace its rows. With no retry the commit is version 1
        or nothing (Lance writes a version's manifest only where none is).
        """
        from lance.dataset import LanceDataset, LanceOperation, Transaction

        create = Transaction(0, LanceOperation.Overwrite(schema, []))
        try:
            return LanceDataset.commit(self.name, create, storage_options=self.options, max_retries=0)
        except OSError as exc:  # "already exists": version 1 was another run's, whose dataset is used
            try:
                return open_dataset(self.name, self.config.storage)
            except (ValueError, FileNotFoundError):
                raise exc from None

    def finish(self) -> None:
        """Build the configured index if the latest version lacks one (a rerun after a failed build)."""
        dataset = self._dataset()
        if dataset is not None and self.config.output.index != "none" and not dataset.list_indices():
            self._index(dataset)

    def _index(self, dataset: Any) -> None:
        """``output.index`` on ``embedding``, replacing the last (trained on every row)."""
        kind = self.config.output.index
        if kind == "none":
            return
        rows = dataset.count_rows(f"{EMBEDDING_COLUMN} IS NOT NULL")
        dim = dataset.schema.field(EMBEDDING_COLUMN).type.list_size
        settings: dict[str, Any] = {"num_partitions": max(1, min(256, int(math.sqrt(rows))))}
        if kind == "ivf_pq":  # sub-vectors of 16 values where they divide the vector, else of 1
            settings["num_sub_vectors"] = dim // 16 if dim % 16 == 0 else dim
        dataset.create_index(EMBEDDING_COLUMN, INDEX_TYPES[kind], replace=True, **settings)


def version_of(dataset: Any, run_id: str) -> int | None:
    """The version of ``dataset`` whose transaction names ``run_id``."""
    for version in dataset.versions():
        transaction = dataset.read_transaction(version["version"])
        if (
            transaction is not None
            and (transaction.transaction_properties or {}).get(RUN_ID_PROPERTY) == run_id
        ):
            return int(version["version"])
    return None


def _parts(location: OutputLocation, files: list[str]) -> tuple[pa.Schema, pa.RecordBatchReader]:
    """The parts' schema (the first's) and their rows, one part's batches at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    filesystem = location.arrow_fs()
    schema = pq.read_schema(location.path_of(files[0]), filesystem=filesystem)

    def batches() -> Iterator[pa.RecordBatch]:
        for path in files:
            yield from pq.ParquetFile(filesystem.open_input_file(location.path_of(path))).iter_batches()

    return schema, pa.RecordBatchReader.from_batches(schema, batches())
