"""Figures of a Rashomon-set interaction job (shared/methods/rashomon_fis.md, "Plots").

Pure functions of a stored result: ``summary`` is ``RashomonResult.summary()`` and
``arrays`` its ``arrays()`` (possibly read back as float32). Each returns a
``matplotlib.figure.Figure`` built with the object-oriented API; the caller renders it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

__all__ = ["draw_swarm", "draw_swarm_main", "draw_halo", "draw_search_trace"]

_CMAP = "viridis"
_STAR: dict[str, Any] = {"marker": "*", "s": 170, "color": "orange", "edgecolor": "black",
                         "linewidth": 0.6, "zorder": 3}


def draw_swarm(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *,
               max_pairs: int = 20) -> Figure:
    """One row per feature subset (the ``max_pairs`` widest clouds, widest on top), one dot
    per joint-masked model at its FIS coloured by its loss from L* to L*+epsilon, a star
    at the reference model's FIS."""
    index = _subset_index(summary, arrays)
    rows = list(summary["interactions"])[:max_pairs]
    labels = [" × ".join(r["features"]) for r in rows]
    values = [np.asarray(arrays["fis_clouds"][index[tuple(r["features"])]], np.float64)
              for r in rows]
    losses = [np.asarray(arrays["fis_losses"][index[tuple(r["features"])]], np.float64)
              for r in rows]
    refs = [r["reference"] for r in rows]
    return _swarm_figure(summary, labels, values, losses, refs, "feature interaction score",
                         "feature subset")


def draw_swarm_main(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Figure:
    """One row per explored feature (widest cloud on top), one dot per searched model
    (the model masked on that feature) at its main effect, coloured by its loss; a star
    at the reference model's main effect."""
    names = list(summary["feature_names"])
    rows = sorted(summary["main_effects"],
                  key=lambda r: -((r["max"] or 0.0) - (r["min"] or 0.0)))
    values, losses = [], []
    for r in rows:
        f = names.index(r["feature"])
        v = np.asarray(arrays["main_effect_clouds"][f], np.float64).ravel()
        loss = np.asarray(arrays["main_effect_losses"][f], np.float64).ravel()
        keep = np.isfinite(v)
        values.append(v[keep])
        losses.append(loss[keep])
    return _swarm_figure(summary, [r["feature"] for r in rows], values, losses,
                         [r["reference"] for r in rows],
                         "main effect (loss increase when permuted)", "feature")


def draw_halo(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *,
              pair: tuple[str, str] | None = None) -> Figure:
    """Halo plot of one feature pair (default: the widest cloud).

    For each joint-masked model (budget split a, directions sigma) the point (loss change
    of the model) * u * sigma with u = a/|a|, and the expected point r * epsilon * u *
    sigma on the circle of radius r * epsilon (no interaction); both closed curves are
    sorted by angle, one pair of curves per radius. Raises ``ValueError`` for a job of
    order 3 or a pair that was not computed.
    """
    subsets = np.asarray(arrays["subsets"])
    if subsets.ndim != 2 or subsets.shape[1] != 2:
        raise ValueError("The halo plot needs feature pairs; this job computed triples.")
    available = [tuple(r["features"]) for r in summary["interactions"]]
    if not available:
        raise ValueError("This job computed no feature pairs.")
    wanted = available[0] if pair is None else tuple(pair)
    index = _subset_index(summary, arrays)
    swap = False
    if wanted not in index and wanted[::-1] in index:
        wanted, swap = wanted[::-1], True
    if wanted not in index:
        raise ValueError(
            f"No feature pair {tuple(pair) if pair else wanted}; the pairs are "
            + ", ".join(f"{a},{b}" for a, b in available) + "."
        )
    s = index[wanted]
    points = np.asarray(arrays["halo"][s], np.float64)  # [K, 2, 2]
    if swap:
        points = points[:, :, ::-1]
        wanted = wanted[::-1]
    radius = np.asarray(arrays["combo_radius"], np.float64)
    eps = float(summary["epsilon"])

    fig = Figure(figsize=(6.0, 6.0), layout="constrained")
    ax = fig.add_subplot()
    radii = np.unique(radius)
    for i, r in enumerate(radii):
        pick = radius == r
        empirical = _closed_by_angle(points[pick, 0, :])
        expected = _closed_by_angle(points[pick, 1, :])
        suffix = f" (r={r:g})" if radii.size > 1 else ""
        shade = 0.35 + 0.5 * i / max(radii.size - 1, 1)
        ax.plot(empirical[:, 0], empirical[:, 1], marker="o", markersize=3, linewidth=2,
                color=(0.12, 0.47 * shade + 0.2, 0.71), label="empirical" + suffix)
        ax.plot(expected[:, 0], expected[:, 1], linewidth=2, linestyle="--",
                color=(0.9, 0.5 * shade + 0.2, 0.1), label="expected (no interaction)" + suffix)
    lim = max(eps, float(np.nanmax(np.abs(points))) if points.size else eps) * 1.1
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ticks = np.array([-1.0, -0.5, 0.0, 0.5, 1.0]) * eps
    tick_labels = ["−ε", "−ε/2", "0", "ε/2", "ε"]
    ax.set_xticks(ticks, labels=tick_labels)
    ax.set_yticks(ticks, labels=tick_labels)
    ax.axhline(0.0, color="0.85", linewidth=0.8, zorder=0)
    ax.axvline(0.0, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel(f"loss change along {wanted[0]}")
    ax.set_ylabel(f"loss change along {wanted[1]}")
    ax.set_title(f"{wanted[0]} × {wanted[1]}, ε = {eps:.4g}")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def draw_search_trace(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Figure:
    """Loss − L* against the mask value m for every accepted step of each feature's
    greedy search (both directions, through m = 1), with a dashed line at epsilon."""
    names = list(summary["feature_names"])
    trace = np.asarray(arrays["search_trace"], np.float64).reshape(-1, 4)
    active = [names.index(f) for f in summary["active_features"]]
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    colors = _colors(len(active))
    for color, f in zip(colors, active, strict=True):
        steps = trace[trace[:, 0] == f][:, 2:4]
        pts = np.vstack([[1.0, 0.0], steps])
        pts = pts[np.argsort(pts[:, 0], kind="stable")]
        ax.plot(pts[:, 0], pts[:, 1], marker="o", markersize=3, color=color, label=names[f])
    eps = summary["epsilon"]
    if eps is not None:
        ax.axhline(eps, color="black", linestyle="--", linewidth=1, label="ε")
    ax.set_xlabel("mask value m")
    ax.set_ylabel("loss − L*")
    if active:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    return fig


# ------------------------------------------------------------------------- helpers


def _subset_index(summary: Mapping[str, Any],
                  arrays: Mapping[str, np.ndarray]) -> dict[tuple[str, ...], int]:
    """Row of ``fis_clouds`` of each subset, keyed by its feature names."""
    names = list(summary["feature_names"])
    subsets = np.asarray(arrays["subsets"]).astype(np.int64)
    return {tuple(names[f] for f in row): s for s, row in enumerate(subsets.reshape(
        subsets.shape[0], -1))}


def _swarm_figure(summary: Mapping[str, Any], labels: Sequence[str],
                  values: Sequence[np.ndarray], losses: Sequence[np.ndarray],
                  refs: Sequence[float | None], x_label: str, y_label: str) -> Figure:
    loss_ref = float(summary["loss_ref"])
    norm = Normalize(loss_ref, loss_ref + float(summary["epsilon"]))
    fig = Figure(figsize=(8.0, 1.6 + 0.45 * max(len(labels), 1)), layout="constrained")
    ax = fig.add_subplot()
    mappable = None
    for i, (v, loss) in enumerate(zip(values, losses, strict=True)):
        mappable = ax.scatter(v, i + _swarm_offsets(v), c=loss, cmap=_CMAP, norm=norm, s=14,
                              linewidths=0, zorder=2)
    ref_y = [i for i, r in enumerate(refs) if r is not None]
    ref_x = [r for r in refs if r is not None]
    if ref_y:
        ax.scatter(ref_x, ref_y, label="reference model", **_STAR)
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(0.0, color="0.8", linewidth=0.8, zorder=0)
    ax.set_yticks(range(len(labels)), labels=list(labels))
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label("loss of the sampled model")
    return fig


def _swarm_offsets(values: np.ndarray, half_width: float = 0.38, bins: int = 60) -> np.ndarray:
    """Vertical offsets that spread dots sharing an x bin: 0, +h, −h, +2h, … (deterministic)."""
    v = np.asarray(values, np.float64)
    out = np.zeros(v.size)
    finite = np.isfinite(v)
    if finite.sum() < 2:
        return out
    lo, hi = v[finite].min(), v[finite].max()
    width = (hi - lo) / bins or 1.0
    bin_of = np.floor((v - lo) / width).astype(np.int64)
    counts: dict[int, int] = {}
    rank = np.zeros(v.size, dtype=np.int64)
    for i in np.argsort(v, kind="stable"):
        if finite[i]:
            rank[i] = counts.get(int(bin_of[i]), 0)
            counts[int(bin_of[i])] = rank[i] + 1
    crowd = max(counts.values())
    step = half_width / max(1, (crowd + 1) // 2)
    level = (rank + 1) // 2
    return np.where(rank % 2 == 1, 1.0, -1.0) * level * step


def _closed_by_angle(points: np.ndarray) -> np.ndarray:
    order = np.argsort(np.arctan2(points[:, 1], points[:, 0]), kind="stable")
    pts = points[order]
    return np.vstack([pts, pts[:1]]) if len(pts) else pts


def _colors(n: int) -> list[tuple[float, float, float, float]]:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
