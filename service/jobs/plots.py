"""Plots of a result: drawn by the kind's PlotSpec (service.registry), rendered to
SVG/PNG, cached.

A plot is drawn once per (job, name, format, options) from the stored summary and the
first ``max_rows`` rows of the arrays it reads, with matplotlib's object-oriented API
(Agg canvas, no pyplot state, so renders in concurrent requests do not interfere), and
kept in ``result_plots``: results never change, so neither do their pictures.
"""

from __future__ import annotations

import io
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from service.db import Database
from service.errors import NotFound, Unprocessable
from service.registry import JobKind, PlotSpec
from service.results.arrays import list_arrays, read_rows
from service.results.tables import PlotImage

ImageFormat = Literal["svg", "png"]
MEDIA_TYPES = {"svg": "image/svg+xml", "png": "image/png"}
DPI = 100


def plot_names(kind: JobKind[Any] | None, summary: dict[str, Any]) -> list[str]:
    """The plots a result of ``kind`` offers, given its summary (none for a kind this
    process does not know)."""
    if kind is None:
        return []
    return [name for name, spec in kind.plots.items()
            if spec.available is None or spec.available(summary)]


def render_plot(db: Database, *, job_id: str, kind: JobKind[Any] | None, kind_name: str,
                summary: dict[str, Any], name: str, image_format: ImageFormat,
                query: dict[str, str]) -> bytes:
    """The plot ``name`` of a result of ``kind`` (named ``kind_name``) as SVG or PNG bytes
    (rendered on first request, then cached)."""
    spec = _spec(kind, kind_name, name, summary)
    options = _options(spec, name, query)
    key = urlencode(sorted((k, str(v)) for k, v in options.items()))
    with db.session() as session:
        cached = session.get(PlotImage, (job_id, name, image_format, key))
        if cached is not None:
            return bytes(cached.content)
        metas = {m.name: m for m in list_arrays(session, job_id)}
    arrays = {array: read_rows(db, metas[array], offset=0, limit=spec.max_rows)
              for array in spec.arrays if array in metas}
    content = _render(spec, summary, arrays, options, image_format)
    try:
        with db.session() as session:
            session.add(PlotImage(job_id=job_id, name=name, image_format=image_format,
                                  options=key, content=content))
    except IntegrityError:
        pass  # a concurrent request cached the same picture first
    return content


def _spec(kind: JobKind[Any] | None, kind_name: str, name: str, summary: dict[str, Any]
          ) -> PlotSpec:
    names = plot_names(kind, summary)
    if kind is None or name not in names:
        raise NotFound(f"A {kind_name} result has no plot '{name}'; its plots are: "
                       f"{', '.join(names) or 'none'}.", code="unknown_plot")
    return kind.plots[name]


def _options(spec: PlotSpec, name: str, query: dict[str, str]) -> dict[str, Any]:
    if spec.options is None:
        return {}
    try:
        validated = spec.options.model_validate(query)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "query"
        raise Unprocessable(f"Plot '{name}': {where}: {first['msg']}.",
                            code="invalid_plot_options") from exc
    return validated.model_dump(exclude_none=True)


def _render(spec: PlotSpec, summary: dict[str, Any], arrays: dict[str, Any],
            options: dict[str, Any], image_format: ImageFormat) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    try:
        figure = spec.draw(summary, arrays, **options)
    except ValueError as exc:  # e.g. ?pair= names a feature the result does not have
        raise Unprocessable(f"The plot cannot be drawn with these options: {exc}",
                            code="invalid_plot_options") from exc
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No timestamp in the SVG, so that the same result always gives the same bytes.
    metadata = {"Date": None} if image_format == "svg" else None
    figure.savefig(buffer, format=image_format, dpi=DPI, metadata=metadata,
                   bbox_inches="tight")
    return buffer.getvalue()
