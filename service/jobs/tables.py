"""The jobs table: one row per job, and the queue every worker claims from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, UTCDateTime, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled"
)
ACTIVE_STATUSES = (QUEUED, RUNNING)
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED)

# A job's queue follows from its device: "cuda" jobs wait for a GPU worker, "cpu" jobs for
# any worker, and "auto" jobs ("any") go to whichever worker is free, GPU workers first.
QUEUE_OF_DEVICE = {"cuda": "gpu", "cpu": "cpu", "auto": "any"}


class JobRecord(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # The claim scans queued (and lease-expired running) jobs of some queues in
        # priority order.
        Index("ix_jobs_claim", "status", "queue", "priority", "id"),
        # An Idempotency-Key is unique within a workspace while it is remembered.
        UniqueConstraint("workspace_id", "idempotency_key", name="uq_jobs_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(8))
    priority: Mapped[int] = mapped_column(Integer, default=0, doc="Lower runs sooner.")
    # Plain ids, not foreign keys: a finished job keeps naming the dataset and model it
    # explained after they are deleted (deleting one in use is refused instead).
    model_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    dataset_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    device: Mapped[str] = mapped_column(String(8))
    device_used: Mapped[str | None] = mapped_column(String(8), nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(200), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(120), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    run_after: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
