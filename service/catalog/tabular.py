"""Reading uploaded tables (CSV, Parquet) with pyarrow, block by block.

``inspect_table`` walks a whole file once, streaming, to count rows, infer column types
and count missing values: memory stays at one block whatever the file's size. A CSV's
text is checked as it is read (UTF-8, the decompressed-size and row caps), so a bad byte
or a bomb stops the walk where it is; a value that does not fit the types read from the
first block costs one more walk as text and one typed walk again.
``read_table`` materializes a table for a job; ``read_rows`` pages through one.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from models.dtypes import dtype_of
from service.errors import PayloadTooLarge, Unprocessable, UnsupportedMediaType

TableFormat = Literal["csv", "parquet"]
FORMATS: tuple[str, ...] = ("csv", "parquet")
# One block in flight at a time: larger blocks made the streaming reader hold ~45x the
# block size (measured: 4 MiB blocks, 190 MiB; 1 MiB blocks, 60 MiB).
BLOCK_BYTES = 1 << 20
# A header row longer than one block gets blocks of twice its length, up to this bound.
MAX_BLOCK_BYTES = 1 << 30
SNIFF_BYTES = 64 << 10
_BOOL_TEXT = pa.array(pacsv.ConvertOptions().true_values + pacsv.ConvertOptions().false_values)
_ROW_COUNT_ERROR = re.compile(r"Expected (\d+) columns, got (\d+)")
_CONTENT_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "text/plain": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
}


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    n_missing: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "n_missing": self.n_missing}


@dataclass(frozen=True)
class TableInfo:
    format: TableFormat
    n_rows: int
    columns: tuple[Column, ...]
    compression: str | None = None
    delimiter: str | None = None
    column_types: dict[str, str] | None = None
    block_bytes: int | None = None  # CSV read block when not BLOCK_BYTES (long header rows)


@dataclass(frozen=True)
class TableLimits:
    """Caps on one table, enforced while it is read: bytes once decompressed, and rows."""

    max_bytes: int
    max_rows: int


def resolve_format(declared: str | None, content_type: str, path: Path,
                   filename: str | None) -> TableFormat:
    """The table format: declared, else from the bytes, the content type or the name."""
    if declared:
        if declared not in FORMATS:
            raise UnsupportedMediaType(
                f"Unknown dataset format '{declared}'; use one of: {', '.join(FORMATS)}."
            )
        return declared  # type: ignore[return-value]
    with path.open("rb") as f:
        head = f.read(4)
    if head == b"PAR1":
        return "parquet"
    mapped = _CONTENT_TYPES.get(content_type.lower())
    if mapped:
        return mapped  # type: ignore[return-value]
    lowered = (filename or "").lower()
    if lowered.endswith(".parquet") or lowered.endswith(".pq"):
        return "parquet"
    if content_type in ("", "application/octet-stream") or lowered.endswith(
        (".csv", ".csv.gz", ".tsv", ".txt", ".gz")
    ):
        return "csv"
    raise UnsupportedMediaType(
        f"Content-Type '{content_type}' is not a table format this server reads; send CSV "
        "(text/csv) or Parquet (application/vnd.apache.parquet), or set format=csv|parquet."
    )


class BatchSink(Protocol):
    """Receives a CSV's record batches as the scan that inspects it reads them."""

    def restart(self) -> None:
        """The scan starts (again, after a late value widened a column): drop what came."""

    def write(self, batch: pa.RecordBatch) -> None: ...


def inspect_table(path: Path, fmt: TableFormat, *, max_bytes: int, max_rows: int,
                  sink: BatchSink | None = None) -> TableInfo:
    """Rows, column types and missing counts, streaming. Refused (413, 422) as soon as the
    table passes ``max_bytes`` once decompressed or ``max_rows``, not after.

    A CSV's batches, with the column types the returned info fixes, also go to ``sink``
    (the last scan's, in order), so that a copy costs no second parse."""
    limits = TableLimits(max_bytes, max_rows)
    if fmt == "parquet":
        return _inspect_parquet(path, limits)
    return _inspect_csv(path, limits, sink)


def read_table(path: Path | IO[bytes], info: TableInfo) -> pa.Table:
    """The whole table, with the column types fixed at upload."""
    if info.format == "parquet":
        # pre_buffer=False: the default read buffers the whole file on top of the table
        # (measured: 748 MiB against 496 MiB for a 200 MB file).
        return pq.read_table(path, pre_buffer=False)
    return pa.Table.from_batches(list(_csv_batches(path, info)), schema=None) \
        if info.n_rows else _empty_table(info)


def iter_batches(path: Path, info: TableInfo, *, batch_rows: int = 65536
                 ) -> Iterator[pa.RecordBatch]:
    """The table in record batches, streaming, with the column types fixed at upload
    (CSV batches are one parse block each; Parquet batches at most ``batch_rows``)."""
    if info.format == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
        return
    yield from _csv_batches(path, info)


def read_rows(source: IO[bytes], info: TableInfo, offset: int, limit: int
              ) -> list[list[Any]]:
    """Rows ``offset .. offset+limit`` as JSON-ready lists, reading only what it needs."""
    rows: list[list[Any]] = []
    if info.format == "parquet":
        pf = pq.ParquetFile(source)
        start = 0
        for group in range(pf.num_row_groups):
            n = pf.metadata.row_group(group).num_rows
            if start + n > offset and len(rows) < limit:
                table = pf.read_row_group(group)
                lo = max(0, offset - start)
                rows.extend(_to_rows(table.slice(lo, limit - len(rows))))
            start += n
            if len(rows) >= limit:
                break
        return rows
    seen = 0
    for batch in _csv_batches(source, info):
        n = batch.num_rows
        if seen + n > offset:
            lo = max(0, offset - seen)
            rows.extend(_to_rows(pa.Table.from_batches([batch]).slice(lo, limit - len(rows))))
            if len(rows) >= limit:
                break
        seen += n
    return rows


def _to_rows(table: pa.Table) -> list[list[Any]]:
    columns = [_json_column(col) for col in table.columns]
    return [list(values) for values in zip(*columns, strict=True)] if columns else []


def _json_column(col: pa.ChunkedArray) -> list[Any]:
    out: list[Any] = []
    for value in col.to_pylist():
        if isinstance(value, float) and value != value:
            out.append(None)
        elif hasattr(value, "isoformat"):
            out.append(value.isoformat())
        else:
            out.append(value)
    return out


# -- Parquet -------------------------------------------------------------------------

def _inspect_parquet(path: Path, limits: TableLimits) -> TableInfo:
    try:
        pf = pq.ParquetFile(path)
        _check_parquet_size(pf.metadata, limits)
        schema = pf.schema_arrow
        missing = [0] * len(schema)
        n_rows = 0
        for batch in pf.iter_batches(batch_size=65536):
            n_rows += batch.num_rows
            for i, col in enumerate(batch.columns):
                missing[i] += col.null_count + _nan_count(col)
    except (pa.ArrowException, OSError) as exc:
        raise Unprocessable(
            f"The file is not a readable Parquet file ({_first_line(exc)}); check that it "
            "was written completely, or upload it as CSV.", code="unreadable_table",
        ) from exc
    for field in schema:
        if pa.types.is_nested(field.type) or pa.types.is_binary(field.type):
            raise Unprocessable(
                f"Column '{field.name}' has type {field.type}, which is not tabular; "
                "flatten it or drop it before uploading.", code="unsupported_column",
            )
    columns = tuple(
        Column(field.name, dtype_of(field.type), missing[i]) for i, field in enumerate(schema)
    )
    _check_column_names([c.name for c in columns])
    return TableInfo("parquet", n_rows, columns)


def _check_parquet_size(metadata: pq.FileMetaData, limits: TableLimits) -> None:
    """The limits, from the footer alone: its row count and uncompressed column sizes."""
    if metadata.num_rows > limits.max_rows:
        raise _too_many_rows(f"{metadata.num_rows:,}", limits.max_rows)
    size = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    if size > limits.max_bytes:
        raise _table_too_large(limits.max_bytes)


def _nan_count(col: pa.Array) -> int:
    if pa.types.is_floating(col.type):
        return int(pc.sum(pc.is_nan(col).cast(pa.int64())).as_py() or 0)
    return 0


# -- CSV -----------------------------------------------------------------------------

def _inspect_csv(path: Path, limits: TableLimits, sink: BatchSink | None) -> TableInfo:
    with path.open("rb") as f:
        magic = f.read(2)
    compression = "gzip" if magic == b"\x1f\x8b" else None
    head = _read_head(path, compression, limits)
    if head.blank:
        raise Unprocessable("The file is empty; upload a CSV with a header row and data.",
                            code="empty_table")
    delimiter = _sniff_delimiter(head.sample, head.header)
    block = _block_bytes(len(head.header.encode()))
    header = _parse_header(head.header, delimiter, block)
    _check_header(header)
    probe = TableInfo("csv", 0, (), compression, delimiter, None,
                      None if block == BLOCK_BYTES else block)
    while True:
        try:
            return _scan_csv(path, probe, limits, sink)
        except _LateValue as late:
            widened = _widen(path, probe, late, limits)
            if widened == (probe.column_types or {}):
                raise _csv_error(late.error) from late.error
            probe = replace(probe, column_types=widened)


def _scan_csv(path: Path, probe: TableInfo, limits: TableLimits, sink: BatchSink | None
              ) -> TableInfo:
    n_rows = 0
    missing: list[int] = []
    schema = None
    stored: pa.Schema | None = None  # the types a later read gets from the returned info
    if sink is not None:
        sink.restart()
    for batch in _checked_batches(path, probe, limits):
        if schema is None:
            schema = batch.schema
            missing = [0] * len(schema)
            stored = pa.schema([pa.field(f.name, _arrow_type(str(f.type))) for f in schema])
        if sink is not None:
            sink.write(batch if batch.schema == stored else batch.cast(stored))
        n_rows += batch.num_rows
        for i, col in enumerate(batch.columns):
            missing[i] += col.null_count + _nan_count(col)
    if schema is None:
        raise Unprocessable("The CSV has a header but no data rows; upload at least one row.",
                            code="empty_table")
    types = {field.name: str(field.type) for field in schema}
    columns = tuple(
        Column(field.name, dtype_of(field.type), missing[i]) for i, field in enumerate(schema)
    )
    return replace(probe, n_rows=n_rows, columns=columns, column_types=types)


class _LateValue(Exception):
    """A block after the first holds a value its column's type cannot take."""

    def __init__(self, error: pa.ArrowInvalid, block: int, schema: pa.Schema) -> None:
        super().__init__(str(error))
        self.error = error
        self.block = block
        self.schema = schema


def _checked_batches(path: Path, info: TableInfo, limits: TableLimits
                     ) -> Iterator[pa.RecordBatch]:
    """The CSV's blocks, its text checked and its rows counted against ``limits`` as they
    are read, so that reading stops at the first bad byte or the first row too many."""
    with _CheckedText(path, info.compression, limits.max_bytes) as text:
        try:
            reader = _open_reader(pa.PythonFile(text, mode="r"), info)
        except pa.ArrowInvalid as exc:
            raise _csv_error(exc) from exc
        n_rows = 0
        for block in itertools.count():
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise _LateValue(exc, block, reader.schema) from exc
            n_rows += batch.num_rows
            if n_rows > limits.max_rows:
                raise _too_many_rows(f"more than {limits.max_rows:,}", limits.max_rows)
            yield batch


def _widen(path: Path, probe: TableInfo, late: _LateValue, limits: TableLimits
           ) -> dict[str, str]:
    """Column types that take every value from the failed block on.

    The types come from the first block; a later value may not fit them. The file is
    read again with every column as text, and from the failed block on each column still
    narrower than text is tried against its type: int64 widens to double, then to text;
    any other type to text. Later blocks are tried in the same pass, so several late
    surprises cost one pass, not one each. Nothing depends on the words of an error.
    """
    narrow = {field.name: field.type for field in late.schema
              if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type))}
    widened = dict(probe.column_types or {})
    as_text = replace(probe, column_types={field.name: "string" for field in late.schema})
    try:
        for block, batch in enumerate(_checked_batches(path, as_text, limits)):
            if block < late.block - 1:  # and the block before, should the reader report late
                continue
            for name, arrow_type in list(narrow.items()):
                fitted = _fit(batch.column(name), arrow_type)
                if fitted == arrow_type:
                    continue
                widened[name] = str(fitted)
                if pa.types.is_string(fitted):
                    del narrow[name]
                else:
                    narrow[name] = fitted
            if not narrow:
                break
    except _LateValue as unreadable:  # the text itself does not parse: ragged rows, quotes
        raise _csv_error(unreadable.error) from unreadable.error
    return widened


def _fit(text: pa.Array, arrow_type: pa.DataType) -> pa.DataType:
    """``arrow_type`` if every value of ``text`` converts to it, else the next wider type."""
    values = text.drop_null()
    if len(values) == 0:
        return arrow_type
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) \
            or pa.types.is_null(arrow_type):
        numbers = pc.utf8_trim(values, characters=" \t")  # as the CSV reader trims numbers
        if pa.types.is_integer(arrow_type) and _casts(numbers, pa.int64()):
            return arrow_type
        return pa.float64() if _casts(numbers, pa.float64()) else pa.string()
    if pa.types.is_boolean(arrow_type):
        fits = pc.all(pc.is_in(values, value_set=_BOOL_TEXT)).as_py()
        return arrow_type if fits else pa.string()
    return arrow_type if _converts(values, arrow_type) else pa.string()


def _casts(values: pa.Array, arrow_type: pa.DataType) -> bool:
    try:
        pc.cast(values, arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _converts(values: pa.Array, arrow_type: pa.DataType) -> bool:
    """Whether the CSV reader itself takes ``values`` as ``arrow_type`` (dates, times)."""
    written = io.BytesIO()
    pacsv.write_csv(pa.table({"v": values}), written)
    data = written.getvalue()
    try:
        pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(block_size=max(BLOCK_BYTES, len(data) + 1),
                                           use_threads=False),
            convert_options=pacsv.ConvertOptions(column_types={"v": arrow_type}),
        )
    except pa.ArrowInvalid:
        return False
    return True


def _csv_batches(source: Path | IO[bytes], info: TableInfo) -> Iterator[pa.RecordBatch]:
    if isinstance(source, Path):
        stream = pa.input_stream(str(source), compression=info.compression)
    else:
        raw = gzip.GzipFile(fileobj=source) if info.compression == "gzip" else source
        stream = pa.PythonFile(raw, mode="r")
    yield from _open_reader(stream, info)


def _open_reader(stream: pa.NativeFile, info: TableInfo) -> pacsv.CSVStreamingReader:
    column_types = {name: _arrow_type(t) for name, t in (info.column_types or {}).items()}
    return pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(block_size=info.block_bytes or BLOCK_BYTES,
                                       use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=info.delimiter or ","),
        convert_options=pacsv.ConvertOptions(
            column_types=column_types, strings_can_be_null=True
        ),
    )


def _arrow_type(name: str) -> pa.DataType:
    """The type a later read gives a column the scan inferred as ``name``.

    It has the dtype the upload reported (models.dtypes.dtype_of): a column of nulls
    only is read as double, missing numbers, not as text a job would refuse.
    """
    if name.startswith("timestamp"):
        return pa.timestamp(name[name.index("[") + 1:name.index("]")].split(",")[0])
    if name.startswith(("time32[", "time64[")):
        return pa.type_for_alias(name)
    return {"int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_(),
            "string": pa.string(), "null": pa.float64(), "date32[day]": pa.date32()}.get(
        name, pa.string())


class _CheckedText(io.RawIOBase):
    """The text of a CSV, decompressed, checked as the CSV reader reads it.

    Every byte is checked to be UTF-8 and counted against the decompressed-size cap;
    raising from ``read`` stops the reader there, so a bomb is never expanded past the
    cap and the place of a bad byte is exact.
    """

    def __init__(self, path: Path, compression: str | None, max_bytes: int) -> None:
        super().__init__()
        self._raw = pa.input_stream(str(path), compression=compression)
        self._compressed = compression is not None
        self._max_bytes = max_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._offset = 0
        self._lines = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self._raw.read(None if size is None or size < 0 else size)
        except (pa.ArrowException, OSError) as exc:
            raise Unprocessable(
                f"The gzip stream is corrupt ({_first_line(exc)}); compress the file again.",
                code="unreadable_table",
            ) from exc
        if self._offset + len(data) > self._max_bytes:
            raise _table_too_large(self._max_bytes)
        pending = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            offset = self._offset - pending + exc.start
            line = self._lines + data.count(b"\n", 0, max(0, exc.start - pending)) + 1
            raise self._not_utf8(offset, line) from exc
        self._offset += len(data)
        self._lines += data.count(b"\n")
        return data

    def close(self) -> None:
        self._raw.close()
        super().close()

    def _not_utf8(self, offset: int, line: int) -> Unprocessable:
        where = ", after decompression" if self._compressed else ""
        return Unprocessable(
            f"The file is not UTF-8 text: byte {offset:,} (counting from 0{where}) on line "
            f"{line:,} is not valid UTF-8. Save the CSV as UTF-8 (\"CSV UTF-8\" in a "
            "spreadsheet, or iconv -t UTF-8), or upload Parquet.", code="not_utf8",
        )


@dataclass(frozen=True)
class _Head:
    header: str  # the first line, whole, without a byte-order mark or line end
    sample: str  # the first line and whole lines after it, about SNIFF_BYTES of them
    blank: bool  # the file holds nothing but white space


def _read_head(path: Path, compression: str | None, limits: TableLimits) -> _Head:
    """The header line, however long, and a sample of lines to sniff the delimiter from."""
    buffer = bytearray()
    end = -1
    with _CheckedText(path, compression, limits.max_bytes) as text:
        while True:
            chunk = text.read(SNIFF_BYTES)
            if end < 0:
                found = chunk.find(b"\n")
                end = -1 if found < 0 else len(buffer) + found
            buffer += chunk
            if not chunk or (end >= 0 and len(buffer) - end > SNIFF_BYTES):
                break
    complete = not chunk
    if buffer.startswith(codecs.BOM_UTF8):
        buffer = buffer[len(codecs.BOM_UTF8):]
        end -= len(codecs.BOM_UTF8)
    if not complete:  # whole lines only: a cut may fall inside a character
        buffer = buffer[: buffer.rindex(b"\n")]
    sample = buffer.decode("utf-8")
    if "\x00" in sample:
        raise Unprocessable("The file is binary, not CSV text; upload CSV (UTF-8) or Parquet.",
                            code="unreadable_table")
    header = sample if end < 0 else buffer[:end].decode("utf-8")
    return _Head(header.rstrip("\r"), sample, complete and not sample.strip())


def _block_bytes(header_bytes: int) -> int:
    """A block of the CSV reader holds the whole header row and the rows after it."""
    if header_bytes > MAX_BLOCK_BYTES // 2:
        raise Unprocessable(
            f"The header row is {header_bytes:,} bytes long; this server reads header rows "
            f"of up to {MAX_BLOCK_BYTES // 2:,} bytes. Shorten the column names.",
            code="header_too_long",
        )
    return max(BLOCK_BYTES, -(-2 * header_bytes // BLOCK_BYTES) * BLOCK_BYTES)


def _parse_header(header: str, delimiter: str, block: int) -> list[str]:
    """The column names as the CSV reader itself splits the header row."""
    if not header.strip():
        raise Unprocessable(
            "The first line of the CSV is empty; the header row (the column names) must be "
            "the first line. Remove the blank lines before it.", code="no_header",
        )
    try:
        table = pacsv.read_csv(
            io.BytesIO(header.encode() + b"\n"),
            read_options=pacsv.ReadOptions(block_size=block, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
        )
    except pa.ArrowInvalid as exc:
        raise _csv_error(exc) from exc
    return table.column_names


def _sniff_delimiter(sample: str, header: str) -> str:
    lines = sample.splitlines()[:50]
    if len(header) <= SNIFF_BYTES:
        try:
            return csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t|").delimiter
        except csv.Error:
            pass
    counts = {d: header.count(d) for d in ",;\t|"}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _check_header(header: list[str]) -> None:
    if all(_is_number(h) for h in header):
        raise Unprocessable(
            "The first row holds only numbers, so the CSV seems to have no header row; add "
            "a first line with the column names.", code="no_header",
        )
    _check_column_names(header)


def _check_column_names(names: list[str]) -> None:
    for i, name in enumerate(names):
        if not name.strip():
            raise Unprocessable(f"Column {i + 1} has no name; give every column a header.",
                                code="no_header")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise Unprocessable(f"The column name '{name}' appears twice; rename one of them.",
                                code="duplicate_column")
        seen.add(name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_error(exc: pa.ArrowInvalid) -> Unprocessable:
    message = _first_line(exc)
    ragged = _ROW_COUNT_ERROR.search(message)
    if ragged:
        return Unprocessable(
            f"A row has {ragged.group(2)} fields but the header has {ragged.group(1)}; "
            "make every row as wide as the header (quote fields that contain the "
            "delimiter).", code="ragged_rows",
        )
    return Unprocessable(f"The CSV could not be parsed: {message}. Fix the file or upload "
                         "Parquet.", code="unreadable_table")


def _table_too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The table is larger than this server's limit of {max_bytes:,} bytes once "
        "decompressed (TABXAI_MAX_TABLE_BYTES); upload a smaller table, or ask the operator "
        "to raise the limit.", code="table_too_large",
    )


def _too_many_rows(count: str, max_rows: int) -> Unprocessable:
    return Unprocessable(
        f"The table has {count} rows; this server takes at most {max_rows:,} rows "
        "(TABXAI_MAX_TABLE_ROWS). Upload a sample or a part of it, or ask the operator to "
        "raise the limit.", code="too_many_rows",
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _empty_table(info: TableInfo) -> pa.Table:
    return pa.table({c.name: pa.array([], pa.string()) for c in info.columns})
