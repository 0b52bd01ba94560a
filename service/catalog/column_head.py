"""The first values of one dataset column, read from the stored file at request time.

Checks at ``POST /v1/jobs`` use it to look at the target's labels before a job is
queued. It reads only what it needs: from Parquet the column's pages of the first row
groups, from CSV the first blocks (every column is tokenized, only this one converted).
"""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from service.catalog.service import table_info
from service.catalog.tables import DatasetRecord
from service.catalog.tabular import BLOCK_BYTES, _arrow_type
from service.storage import BlobReader

# Bytes of the stored file read at most (about: whole blocks), whatever the rows: a wide
# CSV has few rows per MB, and every column of a CSV row is tokenized.
MAX_BYTES = 16 << 20


def read_column_head(session: Session, record: DatasetRecord, column: str,
                     max_rows: int, max_bytes: int = MAX_BYTES) -> pa.ChunkedArray:
    """The first values of ``column`` in file order: ``max_rows`` of them, or fewer when
    that many take more than ``max_bytes`` of the stored file (at least one batch)."""
    info = table_info(record)
    source = BlobReader(session, record.blob_id)
    batches: list[pa.Array] = []
    n = 0
    if info.format == "parquet":
        reader = pq.ParquetFile(source, pre_buffer=False)
        batch_iter = reader.iter_batches(batch_size=16_384, columns=[column])
    else:
        raw = gzip.GzipFile(fileobj=source) if info.compression == "gzip" else source
        types = {name: _arrow_type(t) for name, t in (info.column_types or {}).items()}
        batch_iter = pacsv.open_csv(
            pa.PythonFile(raw, mode="r"),
            read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=info.delimiter or ","),
            convert_options=pacsv.ConvertOptions(
                column_types=types, strings_can_be_null=True, include_columns=[column]))
    for batch in batch_iter:
        batches.append(batch.column(0))
        n += batch.num_rows
        if n >= max_rows or source.bytes_read >= max_bytes:
            break
    if not batches:
        return pa.chunked_array([], type=pa.null())
    return pa.chunked_array(batches).slice(0, max_rows)
