"""Creating, listing and deleting datasets and models.

An upload arrives as a file on local disk (service.uploads); it is inspected first, and
only then stored and catalogued in the caller's one transaction, so a refused or failed
upload leaves neither a row nor a chunk behind.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.inspection import ModelInfo, inspect_model
from service.catalog.paging import (
    COPY_CHUNK_BYTES,
    PagingCopyWriter,
    needs_paging_copy,
    paging_info,
    write_paging_copy,
)
from service.catalog.tables import DatasetRecord, ModelRecord
from service.catalog.tabular import Column, TableInfo, inspect_table, read_rows, resolve_format
from service.config import Settings
from service.db import Database
from service.errors import BadRequest, Conflict, NotFound, Unprocessable
from service.ids import new_id
from service.pagination import paginate
from service.storage import BlobReader, delete_blob, store_file
from service.uploads import MAX_FIELD_BYTES, ReceivedUpload

log = logging.getLogger("tabxai.catalog")

# Checks that refuse deleting a dataset or model still used by work in progress; the jobs
# package registers one. Each takes (session, column, id) and returns a sentence or None.
InUseCheck = Callable[[Session, str, str], str | None]
_in_use_checks: list[InUseCheck] = []


def register_in_use_check(check: InUseCheck) -> None:
    _in_use_checks.append(check)


# -- datasets ------------------------------------------------------------------------

def create_dataset(session: Session, settings: Settings, workspace_id: str,
                   upload: ReceivedUpload, *, name: str | None, target: str | None,
                   fmt: str | None) -> DatasetRecord:
    if upload.size_bytes == 0:
        raise Unprocessable("The file is empty; upload a CSV with a header row and data.",
                            code="empty_table")
    table_format = resolve_format(fmt, upload.content_type, upload.path, upload.filename)
    # The copy is written before anything is stored (a CSV's from the inspecting scan
    # itself), and stored in the same transaction as the upload: a table that cannot be
    # read or copied leaves nothing behind.
    copy = PagingCopyWriter(upload.path.with_name(upload.path.name + ".paging.parquet"))
    try:
        info = inspect_table(upload.path, table_format, max_bytes=settings.table_bytes_limit,
                             max_rows=settings.max_table_rows,
                             sink=copy if table_format == "csv" else None)
        names = [c.name for c in info.columns]
        if target is not None and target not in names:
            raise Unprocessable(
                f"The target column '{target}' is not in the table; its columns are: "
                f"{_clip(names)}.", code="unknown_target",
            )
        copied = copy.close()
        if not copied and needs_paging_copy(upload.path, info):
            _write_copy(upload.path, info, copy.dest)
            copied = True
        blob = store_file(session, upload.path, sha256=upload.sha256)
        paging_blob_id = (store_file(session, copy.dest, chunk_bytes=COPY_CHUNK_BYTES).id
                          if copied else None)
    finally:
        copy.discard()
    record = DatasetRecord(
        id=new_id("ds"), workspace_id=workspace_id,
        name=name or _stem(upload.filename) or "dataset", format=info.format,
        read_options={"compression": info.compression, "delimiter": info.delimiter,
                      "column_types": info.column_types, "block_bytes": info.block_bytes},
        size_bytes=upload.size_bytes, sha256=upload.sha256, n_rows=info.n_rows,
        n_columns=len(info.columns), target=target,
        columns=[c.to_dict() for c in info.columns], blob_id=blob.id,
        paging_blob_id=paging_blob_id,
    )
    session.add(record)
    session.flush()
    log.info("dataset stored", extra={"event": "dataset_created", "dataset_id": record.id,
                                      "size_bytes": record.size_bytes})
    return record


def table_info(record: DatasetRecord) -> TableInfo:
    opts = record.read_options or {}
    return TableInfo(
        record.format,  # type: ignore[arg-type]
        record.n_rows,
        tuple(Column(c["name"], c["dtype"], c["n_missing"]) for c in record.columns),
        opts.get("compression"), opts.get("delimiter"), opts.get("column_types"),
        opts.get("block_bytes"),
    )


def get_dataset(session: Session, workspace_id: str, dataset_id: str) -> DatasetRecord:
    record = session.get(DatasetRecord, dataset_id)
    if record is None or record.workspace_id != workspace_id:
        raise NotFound(f"There is no dataset {dataset_id} in this workspace.")
    return record


def list_datasets(session: Session, workspace_id: str, *, limit: int, cursor: str | None
                  ) -> tuple[list[DatasetRecord], str | None]:
    query = select(DatasetRecord).where(DatasetRecord.workspace_id == workspace_id)
    return paginate(session, query, DatasetRecord.id, limit=limit, cursor=cursor)


def dataset_rows(db: Database, record: DatasetRecord, *, offset: int, limit: int
                 ) -> list[list[Any]]:
    """Rows ``offset .. offset+limit``: from the paging copy, a read of the row groups
    that hold them; a dataset without one (stored before copies) scans its file."""
    if offset >= record.n_rows:
        return []
    info = table_info(record)
    if record.paging_blob_id is not None:
        reader = BlobReader(db, record.paging_blob_id)
        info = paging_info(info)
    else:
        reader = BlobReader(db, record.blob_id)
    return read_rows(reader, info, offset, limit)  # type: ignore[arg-type]


def delete_dataset(session: Session, workspace_id: str, dataset_id: str) -> None:
    record = get_dataset(session, workspace_id, dataset_id)
    _refuse_if_in_use(session, "dataset_id", record.id)
    blob_ids = [record.blob_id, record.paging_blob_id]
    session.delete(record)
    session.flush()
    for blob_id in blob_ids:
        if blob_id is not None:
            delete_blob(session, blob_id)


# -- models --------------------------------------------------------------------------

def create_model(session: Session, settings: Settings, workspace_id: str,
                 upload: ReceivedUpload, *, name: str | None, fmt: str | None,
                 feature_names: str | None, task: str | None, classes: str | None,
                 by_position: str | None = None) -> ModelRecord:
    """``by_position``: "true" to match a model without feature names (an ONNX graph) to
    datasets by position; jobs refuse an ONNX model without names otherwise."""
    if upload.size_bytes == 0:
        raise Unprocessable("The model file is empty; upload the file your library saved.",
                            code="invalid_model")
    info = inspect_model(
        upload.path, format=fmt or None,
        feature_names=_json_list(feature_names, "feature_names", str),
        task=task or None, classes=_json_list(classes, "classes", None),
        trust_uploads=settings.trust_uploads, by_position=_flag(by_position, "by_position"),
        memory_limit_bytes=settings.inspect_memory_bytes,
        time_limit_s=settings.inspect_seconds,
    )
    blob = store_file(session, upload.path, sha256=upload.sha256)
    record = ModelRecord(
        id=new_id("mdl"), workspace_id=workspace_id,
        name=name or _stem(upload.filename) or info.format, format=info.format,
        kind=info.kind, task=info.task, n_features=info.n_features,
        n_outputs=info.n_outputs, info=info.to_dict(), size_bytes=upload.size_bytes,
        sha256=upload.sha256, blob_id=blob.id,
    )
    session.add(record)
    session.flush()
    log.info("model stored", extra={"event": "model_created", "model_id": record.id,
                                    "format": record.format})
    return record


def model_info(record: ModelRecord) -> ModelInfo:
    return ModelInfo.from_dict(record.info)


def get_model(session: Session, workspace_id: str, model_id: str) -> ModelRecord:
    record = session.get(ModelRecord, model_id)
    if record is None or record.workspace_id != workspace_id:
        raise NotFound(f"There is no model {model_id} in this workspace.")
    return record


def list_models(session: Session, workspace_id: str, *, limit: int, cursor: str | None
                ) -> tuple[list[ModelRecord], str | None]:
    query = select(ModelRecord).where(ModelRecord.workspace_id == workspace_id)
    return paginate(session, query, ModelRecord.id, limit=limit, cursor=cursor)


def delete_model(session: Session, workspace_id: str, model_id: str) -> None:
    record = get_model(session, workspace_id, model_id)
    _refuse_if_in_use(session, "model_id", record.id)
    blob_id = record.blob_id
    session.delete(record)
    session.flush()
    delete_blob(session, blob_id)


# -- shared --------------------------------------------------------------------------

def _refuse_if_in_use(session: Session, column: str, object_id: str) -> None:
    for check in _in_use_checks:
        reason = check(session, column, object_id)
        if reason:
            raise Conflict(reason, code="in_use")


def _json_list(text: str | None, field: str, item_type: type | None) -> list[Any] | None:
    """A form field holding a flat JSON list: names (``item_type`` str) or class labels.

    Bounded like a multipart field however it came (a query string has no cap of its
    own); nesting too deep for the parser is a 422, not a RecursionError.
    """
    if text is None or text == "":
        return None
    if len(text.encode()) > MAX_FIELD_BYTES:
        raise BadRequest(f"The field '{field}' is longer than {MAX_FIELD_BYTES:,} bytes; "
                         "send a shorter list.", code="invalid_field")
    try:
        value = json.loads(text, parse_constant=_refuse_constant(field))
    except json.JSONDecodeError as exc:
        raise BadRequest(f"The field '{field}' must be a JSON list, e.g. "
                         f'["age", "income"]; it could not be parsed: {exc.msg}.',
                         code="invalid_field") from exc
    except RecursionError as exc:
        raise Unprocessable(f"The field '{field}' is nested too deeply; it must be a flat "
                            'JSON list, e.g. ["age", "income"].', code="invalid_field") from exc
    if not isinstance(value, list) or (
        item_type is not None and not all(isinstance(v, item_type) for v in value)
    ):
        raise BadRequest(f"The field '{field}' must be a JSON list"
                         + (" of strings." if item_type is str else "."), code="invalid_field")
    _check_list_items(value, field, names=item_type is str)
    return value


def _write_copy(path: Path, info: TableInfo, dest: Path) -> None:
    try:
        write_paging_copy(path, info, dest)
    except (pa.ArrowException, ValueError) as exc:
        raise Unprocessable(
            f"The table was read once but not a second time ({str(exc).splitlines()[0]}); "
            "check that the file is complete and upload it again, or upload it as Parquet.",
            code="unreadable_table",
        ) from exc


def _flag(text: str | None, field: str) -> bool:
    value = (text or "").strip().lower()
    if value in ("", "false", "0", "no"):
        return False
    if value in ("true", "1", "yes"):
        return True
    raise BadRequest(f"The field '{field}' must be true or false, got {text!r}.",
                     code="invalid_field")


def _stem(filename: str | None) -> str | None:
    if not filename:
        return None
    name = Path(filename).name
    for suffix in (".gz", ".csv", ".parquet", ".json", ".ubj", ".txt", ".skops", ".onnx"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or None


def _clip(names: list[str], n: int = 20) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _refuse_constant(field: str) -> Callable[[str], Any]:
    def refuse(name: str) -> Any:
        raise BadRequest(f"The field '{field}' holds {name}, which JSON does not have; "
                         "send numbers or strings.", code="invalid_field")

    return refuse


def _check_list_items(values: list[Any], field: str, *, names: bool) -> None:
    """Feature names are non-empty; labels are strings or finite numbers; none twice."""
    for value in values:
        if names and not value.strip():
            raise Unprocessable(f"The field '{field}' holds an empty name; give every "
                                "feature a name.", code="invalid_field")
        if not names and not (isinstance(value, str) or (
                isinstance(value, int | float) and math.isfinite(value))):
            raise Unprocessable(
                f"The field '{field}' must be a flat list of labels (strings or numbers), "
                f"e.g. [\"no\", \"yes\"] or [0, 1]; it holds {json.dumps(value)[:40]}.",
                code="invalid_field",
            )
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise Unprocessable(f"The field '{field}' holds {json.dumps(value)[:40]} twice; "
                                "each entry must be distinct.", code="invalid_field")
        seen.add(value)
