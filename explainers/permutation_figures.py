"""The permutation importance figure: a box plot of the repeats of each feature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["draw_importance"]


def draw_importance(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *,
                    max_display: int = 30) -> Figure:
    """Horizontal box plot of each feature's importances over the repeats.

    summary / arrays: ``PermutationResult.summary()`` and ``.arrays()``; the summary's
    order (largest mean first) is drawn top-down, its ``index`` picks the row of
    ``arrays["importances"]`` [n_groups, n_repeats]. max_display: at most this many
    features, the most important ones.
    """
    if max_display < 1:
        raise ValueError(f"max_display must be at least 1, got {max_display}.")
    entries = list(summary["importances"])[:max_display]
    importances = np.asarray(arrays["importances"], dtype=np.float64)
    # Bottom-up order so that the most important feature ends at the top of the axis.
    entries.reverse()
    data = [importances[e["index"]] for e in entries]
    labels = [str(e["feature"]) for e in entries]

    figure = Figure(figsize=(7.0, 1.2 + 0.3 * max(len(entries), 1)), layout="constrained")
    ax = figure.add_subplot()
    if data:
        ax.boxplot(data, orientation="horizontal", whis=10, tick_labels=labels)
    ax.axvline(0.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"Decrease in {summary['scoring']} score")
    ax.set_title(f"Permutation importance ({summary['n_repeats']} repeats)")
    return figure
