"""Response bodies of the catalogue endpoints (API.md: Dataset, Model)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ColumnOut(BaseModel):
    name: str
    dtype: Literal["float", "int", "bool", "category", "string", "datetime"]
    n_missing: int


class DatasetOut(BaseModel):
    id: str = Field(examples=["ds_01jd8x3q7c9w6f4n2k5r8t0v1b"])
    name: str
    format: Literal["csv", "parquet"]
    size_bytes: int
    sha256: str
    n_rows: int
    n_columns: int
    target: str | None
    columns: list[ColumnOut]
    created_at: datetime


class RowsOut(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    offset: int
    limit: int
    n_rows: int


class ModelOut(BaseModel):
    id: str = Field(examples=["mdl_01jd8x3q7c9w6f4n2k5r8t0v1b"])
    name: str
    format: str
    kind: Literal["tree", "neural", "other"]
    task: Literal["regression", "binary", "multiclass"]
    n_features: int
    feature_names: list[str] | None
    n_outputs: int
    classes: list[Any] | None
    details: dict[str, Any]
    size_bytes: int
    sha256: str
    created_at: datetime


class Page[T](BaseModel):
    items: list[T]
    next_cursor: str | None
