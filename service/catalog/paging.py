"""The paging copy of a dataset: the table as Parquet with bounded row groups.

A page of rows from a CSV would otherwise be a scan from row 0. The copy, written once
at upload and stored as a blob beside the uploaded file (which stays as it was sent),
turns a page into a read of the footer and of the one or two row groups that hold it,
whatever the offset: the last 100 rows of a 2,000,000-row CSV (186 MB) in 7 ms on
SQLite and 33 ms on PostgreSQL, against 2.3 s and 3.5 s for the scan (bench.paging).
Writing it costs the upload a second pass over the table: a 198 MB CSV took 18.1 s to
upload against 10.6 s without (bench/upload.py). Jobs read a CSV dataset's copy too,
with the column types the CSV reader gives (Parquet has no second-resolution
timestamps, so the source schema travels in the file's metadata).

Writing streams the table one block at a time: memory holds one row group at most.
"""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from service.catalog.tabular import TableInfo, iter_batches

# A page reads the footer and whole row groups: a bound in rows, and in bytes for wide
# tables. 1 MiB groups in 1 MiB blob chunks made a 100-row page of a 400,000-row table
# 3-10x faster than 4 MiB groups in 4 MiB chunks, on SQLite and PostgreSQL alike.
ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 1 << 20
COPY_CHUNK_BYTES = 1 << 20
_MIN_GROUP_ROWS = 1024
# A Parquet upload is paged as it is unless one of its row groups is past these.
_UPLOAD_GROUP_ROWS = ROW_GROUP_ROWS
_UPLOAD_GROUP_BYTES = 8 << 20
_SOURCE_SCHEMA = b"tabxai.source_schema"


def needs_paging_copy(path: Path, info: TableInfo) -> bool:
    """Whether the table at ``path`` needs a copy for paging: every CSV does, and a
    Parquet file does when one of its row groups is past the bounds."""
    if info.n_rows == 0:
        return False
    if info.format == "csv":
        return True
    metadata = pq.ParquetFile(path).metadata
    return any(
        metadata.row_group(g).num_rows > _UPLOAD_GROUP_ROWS
        or metadata.row_group(g).total_byte_size > _UPLOAD_GROUP_BYTES
        for g in range(metadata.num_row_groups)
    )


def write_paging_copy(path: Path, info: TableInfo, dest: Path, *,
                      max_group_rows: int = ROW_GROUP_ROWS) -> None:
    """Write the table at ``path`` to ``dest`` as Parquet, in row groups of at most
    ``max_group_rows`` rows and about :data:`ROW_GROUP_BYTES` bytes."""
    batches = iter_batches(path, info, batch_rows=ROW_GROUP_ROWS)
    first = next(batches, None)
    if first is None:
        raise ValueError("an empty table has no paging copy; check needs_paging_copy first")
    schema = first.schema
    group_rows = _group_rows(first, max_group_rows)
    metadata = {_SOURCE_SCHEMA: base64.b64encode(schema.remove_metadata().serialize())}
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    with pq.ParquetWriter(dest, schema.with_metadata(metadata), write_statistics=False,
                          compression="snappy") as writer:
        for batch in itertools.chain([first], batches):
            if batch.schema != schema:
                batch = batch.cast(schema)
            while batch.num_rows:
                take = min(batch.num_rows, group_rows - pending_rows)
                pending.append(batch.slice(0, take))
                pending_rows += take
                batch = batch.slice(take)
                if pending_rows == group_rows:
                    writer.write_table(pa.Table.from_batches(pending, schema),
                                       row_group_size=group_rows)
                    pending, pending_rows = [], 0
        if pending_rows:
            writer.write_table(pa.Table.from_batches(pending, schema),
                               row_group_size=group_rows)


def paging_info(info: TableInfo) -> TableInfo:
    """How to read a dataset's paging copy: Parquet, with the dataset's rows and columns."""
    return TableInfo("parquet", info.n_rows, info.columns)


def read_paging_copy(path: Path) -> pa.Table:
    """The whole copy, with the column types of the table it was written from."""
    table = pq.read_table(path, pre_buffer=False)
    encoded = (table.schema.metadata or {}).get(_SOURCE_SCHEMA)
    if encoded is None:
        return table
    source = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded)))
    return table.cast(source)


def _group_rows(sample: pa.RecordBatch, max_rows: int) -> int:
    row_bytes = max(1, sample.nbytes // max(1, sample.num_rows))
    return min(max_rows, max(_MIN_GROUP_ROWS, ROW_GROUP_BYTES // row_bytes))
