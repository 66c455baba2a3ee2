"""The Ray Data read over a listing of files or manifest entries: ids and URIs only, no bytes.

The read emits only ``row_id``/``uri``/``fingerprint`` (what the listing said of the input,
written into its row: :mod:`pipeline.inputs.fingerprints`; and, when manifest columns are
carried, each row's index into their table, :mod:`pipeline.inputs.manifest`), so the bytes
are fetched by the decode tasks and a resume filters finished rows before any is read.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
from ray.data.datasource import Datasource, ReadTask

from pipeline.inputs import row_ids
from pipeline.schema import CARRIED_INDEX_COLUMN, FINGERPRINT_FIELD

READ_ROWS_PER_TASK = 256


class UriListDatasource(Datasource):
    """A Ray Data read over a fixed listing: one block of ``row_id``/``uri`` per read task.

    With ``carry``, each row also holds its position in the listing (:data:`CARRIED_INDEX_COLUMN`).
    """

    def __init__(
        self,
        uris: list[str],
        rows_per_task: int = READ_ROWS_PER_TASK,
        *,
        carry: bool = False,
        fingerprints: list[str | None] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._uris = uris
        self._fingerprints: list[str | None] = fingerprints or [None] * len(uris)
        self._rows_per_task = rows_per_task
        self._carry = carry

    def get_name(self) -> str:
        """Name shown in Ray Data's progress and stats."""
        return "ListImages"

    def estimate_inmemory_data_size(self) -> int:
        """Ids and URIs only; the bytes are fetched later."""
        return sum(len(uri) + row_ids.ROW_ID_HEX_CHARS for uri in self._uris)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        """Split the listing into tasks of at most ``rows_per_task`` rows."""
        from ray.data.block import BlockMetadata

        del data_context
        chunk = max(1, min(self._rows_per_task, math.ceil(len(self._uris) / max(1, parallelism))))
        tasks = []
        for start in range(0, len(self._uris), chunk):
            uris, prints = self._uris[start : start + chunk], self._fingerprints[start : start + chunk]

            def read(
                uris: list[str] = uris,
                prints: list[str | None] = prints,
                start: int = start,
                carry: bool = self._carry,
            ) -> list[pa.Table]:
                columns: dict[str, Any] = {
                    "row_id": [row_ids.row_id(u) for u in uris],
                    "uri": uris,
                    FINGERPRINT_FIELD.name: pa.array(prints, pa.string()),
                }
                if carry:
                    columns[CARRIED_INDEX_COLUMN] = pa.array(range(start, start + len(uris)), pa.int64())
                return [pa.table(columns)]

            size = sum(len(uri) + row_ids.ROW_ID_HEX_CHARS for uri in uris)
            metadata = BlockMetadata(num_rows=len(uris), size_bytes=size, input_files=None, exec_stats=None)
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks
