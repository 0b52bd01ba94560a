"""HTTP endpoints of datasets and models (API.md: Datasets, Models)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.catalog import service
from service.catalog.schemas import ColumnOut, DatasetOut, ModelOut, Page, RowsOut
from service.catalog.tables import DatasetRecord, ModelRecord
from service.deps import DatabaseDep, ReadSessionDep, SessionDep, SettingsDep, WorkspaceDep
from service.errors import API_PROBLEMS, problem_responses
from service.metrics import UPLOAD_BYTES
from service.pagination import DEFAULT_LIMIT, MAX_LIMIT
from service.uploads import receive_upload

router = APIRouter(prefix="/v1", responses=API_PROBLEMS)

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")]
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page.")]


def _upload_body(fields: dict[str, Any], raw_types: list[str]) -> dict[str, Any]:
    multipart = {
        "schema": {
            "type": "object",
            "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}, **fields},
        }
    }
    content: dict[str, Any] = {"multipart/form-data": multipart}
    for media in raw_types:
        content[media] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


_DATASET_BODY = _upload_body(
    {"name": {"type": "string"}, "target": {"type": "string"},
     "format": {"type": "string", "enum": ["csv", "parquet"]}},
    ["text/csv", "application/vnd.apache.parquet", "application/octet-stream"],
)
_MODEL_BODY = _upload_body(
    {"name": {"type": "string"},
     "format": {"type": "string",
                "enum": ["xgboost", "lightgbm", "sklearn", "onnx", "torchscript"]},
     "feature_names": {"type": "string", "description": "JSON list of names"},
     "task": {"type": "string", "enum": ["regression", "binary", "multiclass"]},
     "classes": {"type": "string", "description": "JSON list of class labels"},
     "by_position": {"type": "boolean", "default": False,
                     "description": "Match a model without feature names (ONNX) to "
                                    "datasets by column position, the target left out"}},
    ["application/octet-stream", "application/json"],
)


def dataset_out(record: DatasetRecord) -> DatasetOut:
    return DatasetOut(
        id=record.id, name=record.name, format=record.format,
        size_bytes=record.size_bytes, sha256=record.sha256, n_rows=record.n_rows,
        n_columns=record.n_columns, target=record.target,
        columns=[ColumnOut(**c) for c in record.columns], created_at=record.created_at,
    )


def model_out(record: ModelRecord) -> ModelOut:
    info = record.info
    return ModelOut(
        id=record.id, name=record.name, format=record.format,
        kind=record.kind, task=record.task,
        n_features=record.n_features, feature_names=info.get("feature_names"),
        n_outputs=record.n_outputs, classes=info.get("classes"),
        details=info.get("details") or {}, size_bytes=record.size_bytes,
        sha256=record.sha256, created_at=record.created_at,
    )


@router.post("/datasets", status_code=201, response_model=DatasetOut, tags=["datasets"],
             openapi_extra=_DATASET_BODY, summary="Upload a table (CSV or Parquet)",
             responses=problem_responses(400, 413, 415))
async def upload_dataset(
    request: Request, response: Response, settings: SettingsDep, db: DatabaseDep,
    workspace: WorkspaceDep, name: str | None = None, target: str | None = None,
    format: str | None = None,
) -> DatasetOut:
    upload = await receive_upload(request, max_bytes=settings.max_upload_bytes,
                                  tmp_dir=settings.tmp_dir)
    UPLOAD_BYTES.inc(upload.size_bytes)

    def create() -> DatasetOut:
        with db.session() as session:
            record = service.create_dataset(
                session, settings, workspace.id, upload,
                name=upload.fields.get("name", name),
                target=upload.fields.get("target", target) or None,
                fmt=upload.fields.get("format", format) or None,
            )
            return dataset_out(record)

    try:
        out = await run_in_threadpool(create)
    finally:
        upload.discard()
    response.headers["Location"] = f"/v1/datasets/{out.id}"
    return out


@router.get("/datasets", response_model=Page[DatasetOut], tags=["datasets"],
            responses=problem_responses(400))
def list_datasets(session: ReadSessionDep, workspace: WorkspaceDep,
                  limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Page[DatasetOut]:
    records, next_cursor = service.list_datasets(session, workspace.id, limit=limit,
                                                 cursor=cursor)
    return Page[DatasetOut](items=[dataset_out(r) for r in records], next_cursor=next_cursor)


@router.get("/datasets/{dataset_id}", response_model=DatasetOut, tags=["datasets"],
            responses=problem_responses(404))
def get_dataset(dataset_id: str, session: ReadSessionDep, workspace: WorkspaceDep) -> DatasetOut:
    return dataset_out(service.get_dataset(session, workspace.id, dataset_id))


@router.get("/datasets/{dataset_id}/rows", response_model=RowsOut, tags=["datasets"],
            responses=problem_responses(404))
def dataset_rows(dataset_id: str, db: DatabaseDep, session: ReadSessionDep,
                 workspace: WorkspaceDep,
                 offset: Annotated[int, Query(ge=0)] = 0,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> RowsOut:
    record = service.get_dataset(session, workspace.id, dataset_id)
    rows = service.dataset_rows(db, record, offset=offset, limit=limit)
    return RowsOut(columns=[c["name"] for c in record.columns], rows=rows, offset=offset,
                   limit=limit, n_rows=record.n_rows)


@router.delete("/datasets/{dataset_id}", status_code=204, tags=["datasets"],
               responses=problem_responses(404, 409))
def delete_dataset(dataset_id: str, session: SessionDep, workspace: WorkspaceDep) -> Response:
    service.delete_dataset(session, workspace.id, dataset_id)
    return Response(status_code=204)


@router.post("/models", status_code=201, response_model=ModelOut, tags=["models"],
             openapi_extra=_MODEL_BODY, summary="Upload a trained model",
             responses=problem_responses(400, 413, 415))
async def upload_model(
    request: Request, response: Response, settings: SettingsDep, db: DatabaseDep,
    workspace: WorkspaceDep, name: str | None = None, format: str | None = None,
    feature_names: str | None = None, task: str | None = None, classes: str | None = None,
    by_position: Annotated[str | None, Query(
        description="true: match a model without feature names (ONNX) to datasets by "
                    "column position, the target left out.")] = None,
) -> ModelOut:
    upload = await receive_upload(request, max_bytes=settings.max_upload_bytes,
                                  tmp_dir=settings.tmp_dir)
    UPLOAD_BYTES.inc(upload.size_bytes)
    fields = upload.fields

    def create() -> ModelOut:
        with db.session() as session:
            record = service.create_model(
                session, settings, workspace.id, upload,
                name=fields.get("name", name), fmt=fields.get("format", format),
                feature_names=fields.get("feature_names", feature_names),
                task=fields.get("task", task), classes=fields.get("classes", classes),
                by_position=fields.get("by_position", by_position),
            )
            return model_out(record)

    try:
        out = await run_in_threadpool(create)
    finally:
        upload.discard()
    response.headers["Location"] = f"/v1/models/{out.id}"
    return out


@router.get("/models", response_model=Page[ModelOut], tags=["models"],
            responses=problem_responses(400))
def list_models(session: ReadSessionDep, workspace: WorkspaceDep,
                limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Page[ModelOut]:
    records, next_cursor = service.list_models(session, workspace.id, limit=limit,
                                               cursor=cursor)
    return Page[ModelOut](items=[model_out(r) for r in records], next_cursor=next_cursor)


@router.get("/models/{model_id}", response_model=ModelOut, tags=["models"],
            responses=problem_responses(404))
def get_model(model_id: str, session: ReadSessionDep, workspace: WorkspaceDep) -> ModelOut:
    return model_out(service.get_model(session, workspace.id, model_id))


@router.delete("/models/{model_id}", status_code=204, tags=["models"],
               responses=problem_responses(404, 409))
def delete_model(model_id: str, session: SessionDep, workspace: WorkspaceDep) -> Response:
    service.delete_model(session, workspace.id, model_id)
    return Response(status_code=204)
