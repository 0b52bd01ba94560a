"""Result arrays stored by rows in chunks: writing while a job computes, reading pages,
and streamed .npy / .parquet / .csv downloads.

An array of shape ``[N, *row_shape]`` is cut into chunks of ``chunk_rows`` rows (at most
65,536 rows and about 4 MiB), each chunk one blob of little-endian raw values (float32,
or int64 for indices). Writing, reading a page and streaming a download all hold one
chunk at a time, whatever N is.

Writers run in the job process under the job's lease: every chunk is written in a
*fenced* transaction (the caller's ``transaction`` factory checks the lease), tagged with
the lease owner, and becomes visible only when the fenced success transaction calls
:func:`commit_arrays`. Anything else is garbage that :func:`discard_chunks` removes.

Every axis has a name, and labels when its entries have names (features, outputs,
groups, ...): :class:`Axis`. The first axis is the row axis (``row`` unless named
otherwise); it has labels only when its entries are not rows of data (e.g. the features
of an importance matrix).

Download layouts (Parquet and CSV; ``.npy`` is always the array itself):

- ``row``, the index into the array's first axis (0-based), then, when the first axis
  has labels, a column named after it with the label of each row.
- 1-D ``[N]``: then ``value``.
- 2-D ``[N, F]``: then one column per entry of the last axis, named by its labels
  (e.g. feature names) or ``<axis>_<j>``.
- 3-D and 4-D: long form, one line per value: then one column per further axis, named
  after the axis (e.g. ``output``, ``feature``, ``feature_2``), holding the entry's label
  when the axis has labels, else its index; then ``value``.

When a label is itself "row", the index column is called ``row_index`` instead; any
other clash of a column name with a label gets a ``_2`` suffix.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from service.db import Database
from service.errors import NotFound, Unprocessable
from service.results.tables import ArrayChunk, ResultArray
from service.storage import delete_blob, read_chunk, store_chunks

DTYPES = ("float32", "int64")
MAX_CHUNK_ROWS = 65_536
MAX_CHUNK_BYTES = 4 * 1024 * 1024
MAX_PAGE_ROWS = 1000
DEFAULT_PAGE_ROWS = 100
# Values in one JSON page (a few MB of JSON): rows of a wide array (e.g. interaction
# values, F x F per row) come fewer to a page, and an array with rows wider than a page
# is only downloaded.
MAX_PAGE_VALUES = 250_000
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")

TransactionFactory = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class Axis:
    """An axis of a result array: its name and, when its entries have names, their
    labels (as many as the axis has entries)."""

    name: str
    labels: Sequence[str] | None = None
    """Stored as a tuple of str, whatever sequence was given."""

    def __post_init__(self) -> None:
        if not 0 < len(self.name) <= 100:
            raise ValueError(f"axis name {self.name!r} must have 1 to 100 characters")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(str(v) for v in self.labels))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "labels": list(self.labels) if self.labels else None}


@dataclass(frozen=True)
class ArrayMeta:
    """What is known about a stored array: enough to read it back.

    dims: one :class:`Axis` per axis, the row axis first.
    """

    job_id: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    chunk_rows: int
    owner: str
    dims: tuple[Axis, ...]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.shape[0] / self.chunk_rows) if self.shape[0] else 0

    @property
    def nbytes(self) -> int:
        """Bytes of the values as stored (and in the .npy download, less its header)."""
        return array_bytes(self.shape, self.dtype)

    @property
    def axes(self) -> tuple[str, ...]:
        """Names of the axes after the row axis."""
        return tuple(axis.name for axis in self.dims[1:])

    @property
    def labels(self) -> tuple[str, ...] | None:
        """Labels of the last axis after the row axis (None for a 1-D array)."""
        labels = self.dims[-1].labels if len(self.dims) > 1 else None
        return None if labels is None else tuple(labels)

    @classmethod
    def of(cls, row: ResultArray) -> ArrayMeta:
        return cls(row.job_id, row.name, tuple(row.shape), row.dtype, row.chunk_rows, row.owner,
                   _stored_dims(row.axes, row.labels))


def array_bytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes an array of ``shape`` takes in storage (float32: 4 per value, int64: 8)."""
    return math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize


def result_size(arrays: Mapping[str, tuple[Sequence[int], str]]) -> dict[str, Any]:
    """The ``result_bytes`` (and ``result_bytes_by_array``) of a job's estimate, given
    the shape and dtype ("float32" or "int64") each of its arrays will have."""
    by_array = {name: array_bytes(shape, dtype) for name, (shape, dtype) in arrays.items()}
    return {"result_bytes": sum(by_array.values()), "result_bytes_by_array": by_array}


def format_bytes(n: float) -> str:
    """``n`` bytes for a person: 512 bytes, 3.2 MiB, 4.0 GiB."""
    if n < 1024:
        return f"{n:,.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:,.1f} {unit}"
    return f"{n / 1024:,.1f} TiB"


def chunk_rows_for(row_shape: Sequence[int], dtype: str) -> int:
    """Rows per chunk: at most 65,536 and about 4 MiB, at least one."""
    row_bytes = max(1, math.prod(row_shape) * np.dtype(dtype).itemsize)
    return max(1, min(MAX_CHUNK_ROWS, MAX_CHUNK_BYTES // row_bytes))


class ArrayWriter:
    """Appends rows of one array to storage, a chunk per fenced transaction.

    Its axes: either ``dims``, an :class:`Axis` per axis (the row axis first; labels of
    the row axis must name every row written), or the shorthand ``axes`` (names of the
    axes after the row axis) and ``labels`` (labels of the last of them).
    ``chunk_rows``: rows per chunk, at most (and by default) :func:`chunk_rows_for`.
    Holds at most one chunk of rows in memory. ``close()`` writes the last partial
    chunk and returns the array's metadata; the array is not visible until the job's
    success transaction commits it.
    """

    def __init__(self, transaction: TransactionFactory, *, job_id: str, owner: str,
                 name: str, dtype: str, row_shape: Sequence[int],
                 axes: Sequence[str] | None = None,
                 labels: Sequence[str] | None = None,
                 chunk_rows: int | None = None,
                 dims: Sequence[Axis] | None = None) -> None:
        if not NAME.match(name):
            raise ValueError(f"array name {name!r} must be a letter followed by letters, "
                             "digits or underscores (at most 100)")
        if dtype not in DTYPES:
            raise ValueError(f"array dtype must be one of {DTYPES}, got {dtype!r}")
        row_shape = tuple(int(d) for d in row_shape)
        if any(d < 0 for d in row_shape) or len(row_shape) > 3:
            raise ValueError(f"row_shape {row_shape} must have at most 3 non-negative sizes")
        self.dims = _writer_dims(name, row_shape, axes, labels, dims)
        self._transaction = transaction
        self.job_id, self.owner, self.name = job_id, owner, name
        self.dtype, self.row_shape = dtype, row_shape
        largest = chunk_rows_for(row_shape, dtype)
        if chunk_rows is not None and not 1 <= chunk_rows <= largest:
            raise ValueError(f"chunk_rows must be between 1 and {largest}, got {chunk_rows}")
        self.chunk_rows = chunk_rows or largest
        self._pending: list[npt.NDArray[np.generic]] = []
        self._pending_rows = 0
        self._written_rows = 0
        self._seq = 0
        self._meta: ArrayMeta | None = None

    @property
    def n_rows(self) -> int:
        return self._written_rows + self._pending_rows

    @property
    def closed(self) -> bool:
        return self._meta is not None

    def append(self, rows: npt.ArrayLike) -> None:
        """Append ``rows`` of shape ``[n, *row_shape]``."""
        if self._meta is not None:
            raise ValueError(f"array {self.name!r} is closed")
        values = np.asarray(rows)
        if values.shape[1:] != self.row_shape:
            raise ValueError(f"rows of array {self.name!r} must have shape "
                             f"[n, {', '.join(map(str, self.row_shape))}], got "
                             f"{list(values.shape)}")
        if self.dtype == "int64" and values.dtype.kind not in "iub":
            raise ValueError(f"array {self.name!r} holds integers; got {values.dtype}")
        if not len(values):
            return
        self._pending.append(values.astype("<f4" if self.dtype == "float32" else "<i8"))
        self._pending_rows += len(values)
        while self._pending_rows >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def close(self) -> ArrayMeta:
        if self._meta is None:
            if self._pending_rows:
                self._flush(self._pending_rows)
            row_labels = self.dims[0].labels
            if row_labels is not None and len(row_labels) != self._written_rows:
                raise ValueError(f"array {self.name!r} has {self._written_rows} rows but "
                                 f"{len(row_labels)} labels of its axis {self.dims[0].name!r}")
            self._meta = ArrayMeta(self.job_id, self.name, (self._written_rows, *self.row_shape),
                                   self.dtype, self.chunk_rows, self.owner, self.dims)
        return self._meta

    def _flush(self, n: int) -> None:
        pending = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        chunk, rest = pending[:n], pending[n:]
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)
        data = np.ascontiguousarray(chunk).tobytes()
        with self._transaction() as session:
            blob = store_chunks(session, [data])
            session.execute(insert(ArrayChunk).values(
                job_id=self.job_id, owner=self.owner, name=self.name, seq=self._seq,
                n_rows=n, blob_id=blob.id))
        self._seq += 1
        self._written_rows += n


def write_array(transaction: TransactionFactory, *, job_id: str, owner: str, name: str,
                values: npt.ArrayLike, axes: Sequence[str] | None = None,
                labels: Sequence[str] | None = None,
                dims: Sequence[Axis] | None = None) -> ArrayMeta:
    """Store a whole in-memory array (floats as float32, integers and booleans as int64)."""
    array = np.asarray(values)
    if array.ndim < 1:
        raise ValueError(f"array {name!r} must have a row axis; got a scalar")
    dtype = "int64" if array.dtype.kind in "iub" else "float32"
    writer = ArrayWriter(transaction, job_id=job_id, owner=owner, name=name, dtype=dtype,
                         row_shape=array.shape[1:], axes=axes, labels=labels, dims=dims)
    for start in range(0, len(array), writer.chunk_rows):
        writer.append(array[start:start + writer.chunk_rows])
    return writer.close()


def _writer_dims(name: str, row_shape: tuple[int, ...], axes: Sequence[str] | None,
                 labels: Sequence[str] | None, dims: Sequence[Axis] | None
                 ) -> tuple[Axis, ...]:
    """The axes of an array from ``dims``, or from the ``axes``/``labels`` shorthand."""
    if dims is not None:
        if axes is not None or labels is not None:
            raise ValueError(f"array {name!r}: give dims, or axes and labels, not both")
        result = tuple(dims)
        if len(result) != len(row_shape) + 1:
            raise ValueError(f"array {name!r}: dims must describe each of its "
                             f"{len(row_shape) + 1} axes, the row axis first")
    else:
        names = tuple(axes) if axes is not None else tuple(
            f"axis_{i + 1}" for i in range(len(row_shape)))
        if len(names) != len(row_shape):
            raise ValueError(f"axes {names} must name each of the {len(row_shape)} axes "
                             "after the row axis")
        if labels is not None and not row_shape:
            raise ValueError("labels must name each of the 0 entries of the last axis")
        result = (Axis("row"), *(Axis(n, tuple(labels) if labels is not None and
                                      i == len(names) - 1 else None)
                                 for i, n in enumerate(names)))
    for axis, size in zip(result[1:], row_shape, strict=True):
        if axis.labels is not None and len(axis.labels) != size:
            raise ValueError(f"labels must name each of the {size} entries of the axis "
                             f"{axis.name!r} of array {name!r}, got {len(axis.labels)}")
    if len({axis.name for axis in result}) != len(result):
        raise ValueError(f"array {name!r}: axis names {[a.name for a in result]} repeat")
    return result


def _stored_dims(axes: Sequence[str], labels: Any) -> tuple[Axis, ...]:
    """The axes of a stored array from its ``axes`` and ``labels`` columns (see
    service.results.tables.ResultArray for the two forms of ``labels``)."""
    if isinstance(labels, dict):
        per_axis = labels["labels"]
        names = [labels["row_axis"], *axes]
        return tuple(Axis(n, tuple(lab) if lab is not None else None)
                     for n, lab in zip(names, per_axis, strict=True))
    last = len(axes) - 1
    return (Axis("row"), *(Axis(n, tuple(labels) if labels is not None and i == last
                                else None) for i, n in enumerate(axes)))


def _stored_labels(dims: Sequence[Axis]) -> Any:
    """The ``labels`` column of an array: the plain list of the last axis's labels when
    only that axis has labels and the row axis is ``row``, else every axis's labels."""
    if dims[0] == Axis("row") and all(axis.labels is None for axis in dims[1:-1]):
        return list(dims[-1].labels) if len(dims) > 1 and dims[-1].labels else None
    return {"row_axis": dims[0].name,
            "labels": [list(a.labels) if a.labels is not None else None for a in dims]}


# -- committing and discarding (inside the caller's fenced transaction) -------------

def commit_arrays(session: Session, job_id: str, metas: Sequence[ArrayMeta]) -> None:
    """Make ``metas`` the job's result arrays; chunks of other owners are discarded."""
    owners = {m.owner for m in metas}
    if len(owners) > 1:
        raise ValueError("all arrays of a result must come from one lease owner")
    for meta in metas:
        session.add(ResultArray(job_id=job_id, name=meta.name, shape=list(meta.shape),
                                dtype=meta.dtype, chunk_rows=meta.chunk_rows,
                                owner=meta.owner, axes=list(meta.axes),
                                labels=_stored_labels(meta.dims)))
    session.flush()
    discard_chunks(session, job_id, keep_owner=next(iter(owners), None))


def discard_chunks(session: Session, job_id: str, *, keep_owner: str | None = None) -> int:
    """Delete the job's chunks (all, or all but ``keep_owner``'s) and their blobs."""
    query = select(ArrayChunk.owner, ArrayChunk.name, ArrayChunk.seq, ArrayChunk.blob_id) \
        .where(ArrayChunk.job_id == job_id)
    if keep_owner is not None:
        query = query.where(ArrayChunk.owner != keep_owner)
    rows = session.execute(query).all()
    for owner, name, seq, blob_id in rows:
        session.execute(delete(ArrayChunk).where(
            ArrayChunk.job_id == job_id, ArrayChunk.owner == owner,
            ArrayChunk.name == name, ArrayChunk.seq == seq))
        delete_blob(session, blob_id)
    return len(rows)


def delete_arrays(session: Session, job_id: str) -> None:
    """Delete a job's committed arrays and every chunk it has (for deleting the job)."""
    session.execute(delete(ResultArray).where(ResultArray.job_id == job_id))
    discard_chunks(session, job_id)


# -- reading ------------------------------------------------------------------------

def list_arrays(session: Session, job_id: str) -> list[ArrayMeta]:
    rows = session.scalars(select(ResultArray).where(ResultArray.job_id == job_id)
                           .order_by(ResultArray.name))
    return [ArrayMeta.of(row) for row in rows]


def get_array(session: Session, job_id: str, name: str) -> ArrayMeta:
    row = session.get(ResultArray, (job_id, name))
    if row is None:
        names = [m.name for m in list_arrays(session, job_id)]
        raise NotFound(f"The result of {job_id} has no array '{name}'; its arrays are: "
                       f"{', '.join(names) or 'none'}.", code="unknown_array")
    return ArrayMeta.of(row)


def read_rows(db: Database, meta: ArrayMeta, *, offset: int, limit: int
              ) -> npt.NDArray[np.generic]:
    """Rows ``offset .. offset+limit`` (clipped to the array), reading only their chunks."""
    stop = min(meta.shape[0], offset + limit)
    if offset >= stop:
        return np.empty((0, *meta.row_shape), dtype=meta.dtype)
    parts = [chunk for _, chunk in iter_chunks(db, meta, offset // meta.chunk_rows,
                                               (stop - 1) // meta.chunk_rows + 1)]
    first = (offset // meta.chunk_rows) * meta.chunk_rows
    joined = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return joined[offset - first:stop - first]


def iter_chunks(db: Database, meta: ArrayMeta, start: int = 0, stop: int | None = None
                ) -> Iterator[tuple[int, npt.NDArray[np.generic]]]:
    """(first row, rows) of chunks ``start .. stop``, each read in its own transaction."""
    dtype = np.dtype("<f4" if meta.dtype == "float32" else "<i8")
    for seq in range(start, meta.n_chunks if stop is None else stop):
        with db.session(readonly=True) as session:
            chunk = session.get(ArrayChunk, (meta.job_id, meta.owner, meta.name, seq))
            if chunk is None:
                raise NotFound(f"Chunk {seq} of array '{meta.name}' is missing.")
            data = read_chunk(session, chunk.blob_id, 0)
            n_rows = chunk.n_rows
        yield seq * meta.chunk_rows, np.frombuffer(data, dtype=dtype).reshape(
            n_rows, *meta.row_shape)



def max_page_rows(meta: ArrayMeta) -> int:
    """Most rows of the array a JSON page holds: at most MAX_PAGE_ROWS and
    MAX_PAGE_VALUES values (0 when one row is wider than that)."""
    return min(MAX_PAGE_ROWS, MAX_PAGE_VALUES // max(1, math.prod(meta.row_shape)))


def page_limit(meta: ArrayMeta, limit: int | None, *, download: str) -> int:
    """The rows a JSON page of the array holds: ``limit``, by default DEFAULT_PAGE_ROWS
    or fewer; Unprocessable when more than :func:`max_page_rows` are asked for.
    ``download``: the array's URL without suffix, for the refusal's advice."""
    largest = max_page_rows(meta)
    per_row = math.prod(meta.row_shape)
    whole = f"download it whole instead: GET {download}.npy (or .parquet, .csv)"
    if largest == 0:
        raise Unprocessable(
            f"A row of the array '{meta.name}' holds {per_row:,} values, more than a JSON "
            f"page carries ({MAX_PAGE_VALUES:,}); {whole}.", code="page_too_large")
    if limit is None:
        return min(DEFAULT_PAGE_ROWS, largest)
    if limit > largest:
        raise Unprocessable(
            f"A JSON page of the array '{meta.name}' holds at most {largest:,} rows (each "
            f"row has {per_row:,} values; a page at most {MAX_PAGE_VALUES:,}); ask for "
            f"limit={largest} or fewer, or {whole}.", code="page_too_large")
    return limit


# -- downloads ----------------------------------------------------------------------

def npy_stream(db: Database, meta: ArrayMeta) -> Iterator[bytes]:
    """The array as a .npy file: the header, then the stored little-endian rows."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        "descr": "<f4" if meta.dtype == "float32" else "<i8",
        "fortran_order": False,
        "shape": meta.shape,
    })
    yield header.getvalue()
    for _, rows in iter_chunks(db, meta):
        yield rows.tobytes()


def parquet_stream(db: Database, meta: ArrayMeta) -> Iterator[bytes]:
    """The array as Parquet (layout in the module docstring), a row group per chunk."""
    sink = _Sink()
    schema = _schema(meta)
    # Dictionary pages only for label columns: on float values they only add size.
    labels = [f.name for f in schema if pa.types.is_string(f.type)]
    writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, use_dictionary=labels)
    try:
        for first, rows in iter_chunks(db, meta):
            table = chunk_table(meta, first, rows)
            writer.write_table(table, row_group_size=max(1, table.num_rows))
            yield sink.drain()
    finally:
        writer.close()
    yield sink.drain()


def csv_stream(db: Database, meta: ArrayMeta) -> Iterator[bytes]:
    """The array as CSV with a header row (layout in the module docstring)."""
    sink = _Sink()
    writer = pacsv.CSVWriter(pa.PythonFile(sink, mode="w"), _schema(meta))
    try:
        for first, rows in iter_chunks(db, meta):
            writer.write_table(chunk_table(meta, first, rows))
            yield sink.drain()
    finally:
        writer.close()
    yield sink.drain()


def chunk_table(meta: ArrayMeta, first_row: int, rows: npt.NDArray[np.generic]) -> pa.Table:
    """Rows ``first_row ..`` of the array as a table in the download layout."""
    n = len(rows)
    row_index = np.arange(first_row, first_row + n, dtype=np.int64)
    row_labels = meta.dims[0].labels
    inner = rows.shape[1:]
    per_line = math.prod(inner) if rows.ndim > 2 else 1
    columns = [pa.array(np.repeat(row_index, per_line))]
    if row_labels is not None:
        columns.append(pa.array(row_labels).take(pa.array(np.repeat(row_index, per_line))))
    if rows.ndim == 1:
        columns.append(pa.array(rows))
    elif rows.ndim == 2:
        columns += [pa.array(rows[:, j]) for j in range(rows.shape[1])]
    else:
        grids = np.indices(inner).reshape(len(inner), -1)
        for axis, labels in enumerate(a.labels for a in meta.dims[1:]):
            index = pa.array(np.tile(grids[axis], n).astype(np.int64))
            columns.append(pa.array(labels).take(index) if labels is not None else index)
        columns.append(pa.array(rows.reshape(-1)))
    return pa.Table.from_arrays(columns, schema=_schema(meta))


def _schema(meta: ArrayMeta) -> pa.Schema:
    value = pa.float32() if meta.dtype == "float32" else pa.int64()
    first = meta.dims[0]
    wide = tuple(meta.labels or (f"{meta.axes[0]}_{j}" for j in range(meta.shape[1]))) \
        if len(meta.shape) == 2 else ()
    taken = set(wide)
    fields = [pa.field("row_index" if "row" in taken else "row", pa.int64())]
    if first.labels is not None:
        fields.append(pa.field(first.name, pa.string()))
    if len(meta.shape) == 1:
        fields.append(pa.field("value", value))
    elif len(meta.shape) > 2:
        fields += [pa.field(axis.name, pa.string() if axis.labels is not None else pa.int64())
                   for axis in meta.dims[1:]]
        fields.append(pa.field("value", value))
    named = []
    for field in fields:  # the columns that are not labels give way to labels
        name, suffix = field.name, 2
        while name in taken:
            name, suffix = f"{field.name}_{suffix}", suffix + 1
        taken.add(name)
        named.append(field.with_name(name))
    return pa.schema(named + [pa.field(name, value) for name in wide])


class _Sink(io.RawIOBase):
    """A write-only file that keeps what was written until drained.

    Parquet and CSV writers need a file that tells its position; the stream hands
    out the bytes written so far after each chunk instead of holding the whole file.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data
