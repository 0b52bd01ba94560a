"""Request and response bodies of the jobs endpoints (API.md: Jobs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobCreate(BaseModel):
    """``POST /v1/jobs``: what to explain, with what, where."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(examples=["tree_shap"], max_length=64)
    model_id: str | None = Field(None, examples=["mdl_01jd8x3q7c9w6f4n2k5r8t0v1b"])
    dataset_id: str = Field(examples=["ds_01jd8x3q7c9w6f4n2k5r8t0v1b"])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    params: dict[str, Any] = Field(default_factory=dict)


class JobError(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    """A job. ``estimate``, ``queue``, ``cancel_requested`` and ``eta_seconds`` extend
    API.md's Job. ``progress`` is the share of the whole job done (0 to 1; it only goes
    up within an attempt), ``stage`` what the job is doing now."""

    id: str = Field(examples=["job_01jd8x3q7c9w6f4n2k5r8t0v1b"])
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    stage: str
    model_id: str | None
    dataset_id: str | None
    params: dict[str, Any]
    device: Literal["auto", "cpu", "cuda"]
    device_used: Literal["cpu", "cuda"] | None
    attempts: int
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    estimate: dict[str, Any] | None = None
    queue: str
    cancel_requested: bool
    eta_seconds: float | None = Field(
        None, description="Seconds until a running job is expected to end: the time it "
        "has run times (1 - progress) / progress, or, before any progress, what is left "
        "of the estimate's seconds. null unless the job is running.")


class EstimateOut(BaseModel):
    """``POST /v1/jobs?dry_run=true``: what the job would cost; nothing is queued."""

    estimate: dict[str, Any] = Field(examples=[{"rows_to_predict": 2930, "seconds": 4.2}])
