"""Figures of a Feature Vectors result: the half-disc of vectors and the importance bars.

Both figures read only the summary (``FeatureVectorsResult.summary()``); ``arrays`` is
taken for the common figure signature of the service.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Ellipse
from matplotlib.textpath import TextPath

__all__ = ["draw_feature_vectors", "draw_importance", "LABEL_GID"]

# A cyclic colour map run once around across the half-disc (period 180°), so that
# neighbouring directions get neighbouring colours and the whole hue circle is used.
_CMAP = colormaps["hsv"]
# Below this many features every feature is labelled (the method doc's rule).
_LABEL_ALL_BELOW = 30
_FONT_SIZE = 8.0
_MARKER_SIZE = 28.0  # points², as scatter's ``s``
# Distances (data units; the disc has radius 1) at which a label may sit from its point.
_SPOT_GAPS = (0.025, 0.05, 0.1, 0.16, 0.24, 0.34, 0.46)
# The gid of every feature label artist, so that callers (and tests) can find them.
LABEL_GID = "feature-label"


def draw_feature_vectors(summary: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]],
                         *, max_labels: int = 20) -> Figure:
    """The feature vectors on the upper half-disc.

    Each used feature is a point at (x, y) = (v_i2, v_i1), coloured by its angle on a
    cyclic colour map (period 180°); dotted rings mark importance 0.1, 0.2, …, 1. With bagging, grey
    ellipses show ±3 std per coordinate around the labelled features (around all of
    them the picture would be a grey blot). Labels: every feature when there are fewer than
    30, else the ``max_labels`` most important; they are pushed apart so they do not
    overlap. Unused features (zero vectors) are counted in the title, not drawn.
    """
    if not isinstance(max_labels, int) or max_labels < 0:
        raise ValueError(f"max_labels must be an integer ≥ 0, got {max_labels!r}")
    features = list(summary["features"])
    used = [f for f in features if not f["unused"]]
    x = np.array([f["x"] for f in used], dtype=np.float64)
    y = np.array([f["y"] for f in used], dtype=np.float64)

    fig = Figure(figsize=(8.0, 5.2))
    # A fixed axes box (no layout engine), so the data→inch scale is known before drawing
    # and the label placement can work in inches.
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.88))
    ax.set_aspect("equal")
    ax.axis("off")
    ymin = min(-0.05, float(y.min()) - 0.05) if y.size else -0.05
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(ymin, 1.12)
    ax.apply_aspect()
    _draw_rings(ax)

    n_labels = len(used) if len(features) < _LABEL_ALL_BELOW else min(max_labels, len(used))
    for f in used[:n_labels]:
        if f["std"] is not None:
            sx, sy = f["std"]
            ax.add_patch(Ellipse((f["x"], f["y"]), width=6.0 * sx, height=6.0 * sy,
                                 facecolor="0.5", edgecolor="0.35", linewidth=0.4, alpha=0.18,
                                 zorder=1))
    colours = _angle_colours([f["angle_deg"] for f in used])
    ax.scatter(x, y, c=colours, s=_MARKER_SIZE, edgecolors="0.2", linewidths=0.5, zorder=3)
    if n_labels:
        _draw_labels(fig, ax, [f["feature"] for f in used[:n_labels]], x[:n_labels],
                     y[:n_labels], x, y)
    title = "Feature vectors"
    n_unused = len(features) - len(used)
    if n_unused:
        title += f" ({n_unused} unused feature{'s' if n_unused > 1 else ''} not shown)"
    ax.set_title(title)
    return fig


def draw_importance(summary: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]],
                    *, max_display: int = 30) -> Figure:
    """Horizontal bars of importance (vector length, top feature = 1), largest on top.

    Shows the ``max_display`` most important features, bars coloured by angle as in the
    feature-vector figure.
    """
    if not isinstance(max_display, int) or max_display < 1:
        raise ValueError(f"max_display must be an integer ≥ 1, got {max_display!r}")
    features = list(summary["features"])[:max_display]
    names = [f["feature"] for f in features]
    importance = np.array([f["importance"] for f in features], dtype=np.float64)
    colours = _angle_colours([f["angle_deg"] for f in features])
    fig = Figure(figsize=(7.0, 1.0 + 0.26 * max(len(features), 3)), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(features))[::-1]
    ax.barh(positions, importance, color=colours, edgecolor="0.2", linewidth=0.5)
    ax.set_yticks(positions, labels=names, fontsize=_FONT_SIZE)
    ax.set_xlim(0.0, 1.05)
    ax.set_xlabel("importance (length of the feature vector)")
    total = len(summary["features"])
    ax.set_title("Feature Vectors importance" + (
        f" (top {len(features)} of {total})" if total > len(features) else ""))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _angle_colours(angle_deg: Sequence[float]) -> npt.NDArray[np.float64]:
    """RGBA [n, 4] for angles in degrees (0 is straight up in the half-disc)."""
    return _CMAP(np.mod(np.asarray(angle_deg, dtype=np.float64) + 90.0, 180.0) / 180.0)


def _draw_rings(ax: Any) -> None:
    theta = np.linspace(0.0, np.pi, 181)
    for r in np.arange(1, 11) / 10:
        ax.plot(r * np.cos(theta), r * np.sin(theta), linestyle=":", linewidth=0.7,
                color="0.45" if r == 1.0 else "0.7", zorder=0)
    ax.plot([-1.0, 1.0], [0.0, 0.0], linewidth=0.7, color="0.45", zorder=0)
    for r in (0.5, 1.0):
        ax.text(r, -0.01, f"{r:g}", ha="center", va="top", fontsize=_FONT_SIZE - 1,
                color="0.4")


def _draw_labels(fig: Figure, ax: Any, names: Sequence[str], x: npt.NDArray[np.float64],
                 y: npt.NDArray[np.float64], all_x: npt.NDArray[np.float64],
                 all_y: npt.NDArray[np.float64]) -> None:
    """Label the points (x, y), most important first, each at the nearest free spot.

    Candidate spots ring the point at growing distances, starting along the ray from the
    origin; a spot is free when its box overlaps no placed label, no drawn point and
    stays inside the axes. When none is free the least-overlapping spot is used. Labels
    away from their point get a thin leader line.
    """
    width, height, marker = _label_boxes(fig, ax, names)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    placed: list[tuple[float, float, float, float]] = []  # centre x, centre y, w, h
    for i, name in enumerate(names):
        w, h = float(width[i]), float(height[i])
        ray = math.atan2(float(y[i]), float(x[i])) if math.hypot(x[i], y[i]) > 1e-9 else (
            math.pi / 2)
        cx, cy, gap = _candidate_spots(float(x[i]), float(y[i]), w, h, ray)
        box_x = np.concatenate([all_x, [b[0] for b in placed]])
        box_y = np.concatenate([all_y, [b[1] for b in placed]])
        box_w = np.concatenate([np.full(all_x.size, marker), [b[2] for b in placed]])
        box_h = np.concatenate([np.full(all_y.size, marker), [b[3] for b in placed]])
        over_x = np.clip(0.5 * (w + box_w[None, :]) - np.abs(cx[:, None] - box_x[None, :]),
                         0.0, None)
        over_y = np.clip(0.5 * (h + box_h[None, :]) - np.abs(cy[:, None] - box_y[None, :]),
                         0.0, None)
        cost = (over_x * over_y).sum(axis=1)
        outside = ((cx - w / 2 < x0) | (cx + w / 2 > x1) | (cy - h / 2 < y0)
                   | (cy + h / 2 > y1))
        cost = np.where(outside, np.inf, cost)
        free = np.flatnonzero(cost == 0.0)
        best = int(free[0]) if free.size else int(np.argmin(cost))
        placed.append((float(cx[best]), float(cy[best]), w, h))
        far = gap[best] > _SPOT_GAPS[0]
        ax.annotate(name, xy=(x[i], y[i]), xytext=(cx[best], cy[best]), ha="center",
                    va="center", fontsize=_FONT_SIZE, zorder=4, gid=LABEL_GID,
                    arrowprops=({"arrowstyle": "-", "color": "0.5", "linewidth": 0.5,
                                 "shrinkA": 0, "shrinkB": 3} if far else None))


def _candidate_spots(px: float, py: float, w: float, h: float, ray: float
                     ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                                npt.NDArray[np.float64]]:
    """Centres of the candidate label boxes around a point, in preference order, with
    the gap between point and box of each."""
    turns = np.array([0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6]) * (np.pi / 6)
    direction = ray + turns
    gap = np.repeat(np.array(_SPOT_GAPS), direction.size)
    direction = np.tile(direction, len(_SPOT_GAPS))
    ux, uy = np.cos(direction), np.sin(direction)
    # Push the box centre out by half its size along the direction, so the box edge and
    # not its centre sits ``gap`` away from the point.
    return px + ux * (gap + 0.5 * w), py + uy * (gap + 0.5 * h), gap


def _label_boxes(fig: Figure, ax: Any, names: Sequence[str]
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
    """Label widths and heights, and a marker's side, in data units (with margins)."""
    box = ax.get_position()  # figure fraction, after apply_aspect
    x0, x1 = ax.get_xlim()
    inches_per_unit = box.width * fig.get_size_inches()[0] / (x1 - x0)
    points_per_unit = 72.0 * inches_per_unit
    font = FontProperties(size=_FONT_SIZE)
    width = np.array([TextPath((0, 0), n, prop=font).get_extents().width for n in names],
                     dtype=np.float64)
    return ((width + 4.0) / points_per_unit,
            np.full(len(names), 1.35 * _FONT_SIZE / points_per_unit, dtype=np.float64),
            (math.sqrt(_MARKER_SIZE) + 2.0) / points_per_unit)
