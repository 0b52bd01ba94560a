"""Figures of a TreeSHAP result: beeswarm summary, importance bars, interaction heat map.

Pure functions of the stored summary and arrays (shared/API.md); each returns a
``matplotlib.figure.Figure`` built without pyplot's global state, for the service to
render as SVG or PNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

__all__ = ["draw_summary", "draw_importance", "draw_interactions"]


def draw_summary(summary: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]], *,
                 feature_values: npt.NDArray[Any] | None = None, max_display: int = 20,
                 output: int = 0) -> Figure:
    """Beeswarm of the SHAP values of one output, drawn by shap's own plot.

    arrays["shap_values"]: [N, F] or [N, K, F]. feature_values: [N, F] values of the
    explained rows (numbers; category codes; NaN drawn grey) to colour the points, or None
    for uncoloured points. max_display: features shown (the rest summed in one row).
    """
    import shap

    values = _output_values(summary, arrays, output)
    if feature_values is not None:
        feature_values = np.asarray(feature_values, dtype=np.float64)
        if feature_values.shape != values.shape:
            raise ValueError(f"feature_values must have shape {values.shape}, "
                             f"got {feature_values.shape}")
    _check_max_display(max_display)
    explanation = shap.Explanation(
        values=values,
        base_values=np.full(values.shape[0], float(summary["base_values"][output])),
        data=feature_values,
        feature_names=list(summary["feature_names"]),
    )
    # shap sizes its own figure only without an axes; this is its size rule
    figure = Figure(figsize=(8, min(values.shape[1], max_display) * 0.4 + 1.5))
    ax = figure.add_subplot()
    shap.plots.beeswarm(explanation, max_display=max_display, ax=ax, show=False,
                        plot_size=None, color_bar=feature_values is not None)
    ax.set_title(_title("SHAP values", summary, output))
    figure.tight_layout()
    return figure


def draw_importance(summary: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]], *,
                    max_display: int = 20, output: int | None = None) -> Figure:
    """Horizontal bars of mean |SHAP value| per feature, largest on top.

    output: one output's bars, or None for all outputs stacked (one colour each).
    """
    _check_max_display(max_display)
    outputs = list(summary["outputs"])
    if output is not None and not 0 <= output < len(outputs):
        raise ValueError(f"output must be in 0..{len(outputs) - 1}, got {output}")
    shown = [k for k in range(len(outputs)) if output is None or k == output]
    rows = sorted(summary["importance"],
                  key=lambda item: -sum(item["mean_abs_shap"][k] for k in shown))[:max_display]
    names = [item["feature"] for item in rows][::-1]
    heights = np.array([[item["mean_abs_shap"][k] for k in shown] for item in rows])[::-1]
    figure = Figure(figsize=(8, 0.35 * len(names) + 1.5))
    ax = figure.add_subplot()
    left = np.zeros(len(names))
    for column, k in enumerate(shown):
        ax.barh(names, heights[:, column], left=left, label=outputs[k])
        left = left + heights[:, column]
    if len(shown) > 1:
        ax.legend(loc="lower right")
    ax.set_xlabel("mean |SHAP value| (raw output)")
    ax.set_title(_title("Feature importance", summary, output))
    ax.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return figure


def draw_interactions(summary: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]], *,
                      max_display: int = 15, output: int = 0) -> Figure:
    """Heat map of mean |SHAP interaction value| between the ``max_display`` most
    important features of one output (diagonal: main effects)."""
    _check_max_display(max_display)
    if summary.get("interaction_importance") is None:
        raise ValueError("this result has no interaction values; run tree_shap with "
                         "interactions=true to draw them")
    pairs = np.asarray(summary["interaction_importance"], dtype=np.float64)
    outputs = list(summary["outputs"])
    if not 0 <= output < len(outputs):
        raise ValueError(f"output must be in 0..{len(outputs) - 1}, got {output}")
    if pairs.ndim == 3:
        pairs = pairs[output]
    names = list(summary["feature_names"])
    by_importance = sorted(summary["importance"], key=lambda item: -item["mean_abs_shap"][output])
    top = [names.index(item["feature"]) for item in by_importance[:max_display]]
    matrix = pairs[np.ix_(top, top)]
    labels = [names[i] for i in top]
    size = 0.45 * len(top) + 3
    figure = Figure(figsize=(size + 1.5, size))
    ax = figure.add_subplot()
    image = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(top)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(top)), labels)
    figure.colorbar(image, ax=ax, label="mean |SHAP interaction value|")
    ax.set_title(_title("SHAP interactions", summary, output))
    figure.tight_layout()
    return figure


def _output_values(summary: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]],
                   output: int) -> npt.NDArray[np.float64]:
    values = np.asarray(arrays["shap_values"], dtype=np.float64)
    n_outputs = len(summary["outputs"])
    if not 0 <= output < n_outputs:
        raise ValueError(f"output must be in 0..{n_outputs - 1}, got {output}")
    return values[:, output, :] if values.ndim == 3 else values


def _check_max_display(max_display: int) -> None:
    if max_display < 1:
        raise ValueError(f"max_display must be >= 1, got {max_display}")


def _title(what: str, summary: Mapping[str, Any], output: int | None) -> str:
    outputs = list(summary["outputs"])
    if len(outputs) == 1 or output is None:
        return what
    return f"{what}: {outputs[output]}"
