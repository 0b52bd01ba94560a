"""Tables of job results: summaries, array metadata and chunks, cached plots.

An array's rows are stored in chunks, one blob each (service.storage). A chunk row is
written while the job computes, tagged with the lease ``owner`` that wrote it; it becomes
part of a result only when the job's fenced success transaction inserts the
``result_arrays`` row naming that owner. Chunks of any other owner are garbage from a
failed or lost attempt and are deleted when the job next changes hands or ends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, UTCDateTime, utcnow


class JobResult(Base):
    __tablename__ = "job_results"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ResultArray(Base):
    """A committed array: its shape and the owner whose chunks hold its rows."""

    __tablename__ = "result_arrays"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    shape: Mapped[list[int]] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(16))
    chunk_rows: Mapped[int] = mapped_column(Integer, doc="Rows in every chunk but the last.")
    owner: Mapped[str] = mapped_column(String(120))
    axes: Mapped[list[str]] = mapped_column(JSON, doc="Names of the axes after the row axis.")
    # Either the list of labels of the last axis (e.g. features), when that is the only
    # axis with labels and the row axis is "row"; or, for any other array,
    # {"row_axis": name of the first axis, "labels": [labels or null, one per axis]}.
    labels: Mapped[list[str] | dict[str, Any] | None] = mapped_column(
        JSON, nullable=True, doc="Labels of the array's axes (service.results.arrays)."
    )


class ArrayChunk(Base):
    """Rows ``seq * chunk_rows ..`` of an array, written by one lease owner."""

    __tablename__ = "array_chunks"

    # No cascade: chunks name blobs, which only explicit cleanup deletes.
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    n_rows: Mapped[int] = mapped_column(Integer)
    blob_id: Mapped[str] = mapped_column(ForeignKey("blobs.id"), index=True)


class PlotImage(Base):
    """A rendered plot, cached after its first request."""

    __tablename__ = "result_plots"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    image_format: Mapped[str] = mapped_column(String(8), primary_key=True)
    options: Mapped[str] = mapped_column(
        String(500), primary_key=True, doc="The plot's options as a canonical query string."
    )
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
