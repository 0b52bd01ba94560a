"""The first values of one dataset column, read from the stored file at request time.

Checks at ``POST /v1/jobs`` use it to look at the target's labels before a job is
queued. It reads only what it needs: from Parquet the column's pages of the first row
groups, from CSV the first blocks (every column is tokenized, only this one converted).
"""

from __future__ import annotations

import gzip
import io

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from service.catalog.service import table_info
from service.catalog.tables import DatasetRecord
from service.catalog.tabular import BLOCK_BYTES, _arrow_type
from service.errors import NotFound
from service.storage import read_chunk
from service.tables import Blob

# Bytes of the stored file read at most (about: whole blocks), whatever the rows: a wide
# CSV has few rows per MB, and every column of a CSV row is tokenized.
MAX_BYTES = 16 << 20


def read_column_head(session: Session, record: DatasetRecord, column: str,
                     max_rows: int, max_bytes: int = MAX_BYTES) -> pa.ChunkedArray:
    """The first values of ``column`` in file order: ``max_rows`` of them, or fewer when
    that many take more than ``max_bytes`` of the stored file (at least one batch)."""
    info = table_info(record)
    source = _SessionBlob(session, record.blob_id)
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


class _SessionBlob(io.RawIOBase):
    """A read-only, seekable file over a blob, read through the request's own session
    (one chunk in memory at a time)."""

    def __init__(self, session: Session, blob_id: str) -> None:
        super().__init__()
        blob = session.get(Blob, blob_id)
        if blob is None:
            raise NotFound(f"Blob {blob_id} does not exist.")
        self.size = blob.size_bytes
        self._n_chunks = blob.n_chunks
        self._chunk_bytes = blob.chunk_bytes
        self._session = session
        self._blob_id = blob_id
        self._pos = 0
        self.bytes_read = 0
        self._chunk = b""
        self._chunk_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._pos >= self.size:
            return 0
        if not self._chunk_start <= self._pos < self._chunk_start + len(self._chunk):
            seq = min(self._pos // self._chunk_bytes, self._n_chunks - 1)
            self._chunk = read_chunk(self._session, self._blob_id, seq)
            self._chunk_start = seq * self._chunk_bytes
        start = self._pos - self._chunk_start
        n = min(len(buffer), len(self._chunk) - start)
        buffer[:n] = self._chunk[start:start + n]
        self._pos += n
        self.bytes_read += n
        return n
