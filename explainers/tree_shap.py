"""Exact path-dependent TreeSHAP, values and interactions, on XGBoost's engine.

Every :class:`~models.trees.TreeEnsemble` is translated into an XGBoost booster
(:mod:`models.xgboost_export`) and explained with ``pred_contribs`` /
``pred_interactions`` (Quadrature-TreeSHAP in XGBoost >= 3.3: multi-threaded on the CPU,
on the GPU when the booster's device is ``cuda``). Values are in the ensemble's raw
output space (margin / log-odds, one output per class); see shared/methods/tree_shap.md.

Rows are explained in chunks whose size is bounded by memory; the caller either consumes
:meth:`TreeShap.iter_chunks` (streaming the per-row arrays somewhere) with a
:class:`TreeShapSummary`, or calls :func:`explain_tree_shap` to keep everything in memory.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost

from explainers.progress import ProgressCallback, no_progress
from models.gpu import xgboost_cuda, xgboost_device_after_probe
from models.trees import TreeEnsemble
from models.xgboost_export import NotExportable, base_margin, to_xgboost_json

__all__ = ["TreeShap", "ShapChunk", "TreeShapSummary", "TreeShapResult",
           "explain_tree_shap", "NotExportable"]

logger = logging.getLogger(__name__)

_STAGE = "tree_shap"
_MAX_CHUNK_ROWS = 50_000
# output float32 from XGBoost, our copy without the bias column, and slack for XGBoost's
# per-thread buffers
_BYTES_PER_CELL = 4 * 3

# Exporting is Python work proportional to the number of nodes; loading the JSON is C++.
_exported_models: weakref.WeakKeyDictionary[TreeEnsemble, bytes] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class ShapChunk:
    """SHAP values of rows ``row_start .. row_start + n`` of the explained matrix.

    values: float32 [n, F] for one output, [n, K, F] for K outputs.
    interaction_values: float32 [n, F, F] / [n, K, F, F], or None.
    margin: float64 [n, K], the exported booster's raw output for these rows.
    """

    row_start: int
    values: npt.NDArray[np.float32]
    interaction_values: npt.NDArray[np.float32] | None
    margin: npt.NDArray[np.float64]

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[0])


class TreeShap:
    """TreeSHAP explainer for one ensemble.

    Parameters
    ----------
    ensemble : TreeEnsemble
        Any ensemble :func:`models.xgboost_export.to_xgboost_json` can translate;
        otherwise :class:`NotExportable` is raised with the reason.
    device : {"cpu", "cuda", "cuda:N", "auto"}, default "cpu"
        Where XGBoost computes. A CUDA device falls back to the CPU when no GPU is
        visible; :attr:`device_used` says where it ran. "auto" is "cuda" when a GPU is
        available, else "cpu".
    nthread : int, default 0
        CPU threads for XGBoost; 0 uses all cores.
    output_names : sequence of str, optional
        One name per output (class labels); default "raw" for one output, else
        "output_0" .. "output_{K-1}".

    Attributes
    ----------
    base_values : float64 [K], the expected raw output under the trees' covers (phi_0).
    feature_names, output_names : tuple of str.
    device_used : "cpu" or the CUDA device XGBoost runs on.
    """

    def __init__(self, ensemble: TreeEnsemble, *, device: str = "cpu", nthread: int = 0,
                 output_names: Sequence[str] | None = None) -> None:
        if device != "auto" and device != "cpu" and not device.startswith("cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
        if nthread < 0:
            raise ValueError(f"nthread must be >= 0, got {nthread}")
        k = ensemble.n_outputs
        if output_names is not None and len(output_names) != k:
            raise ValueError(f"expected {k} output names, got {len(output_names)}")
        _check_covers(ensemble)
        if device == "auto":
            device = "cuda" if xgboost_cuda() else "cpu"
        self.ensemble = ensemble
        self.nthread = nthread
        self.feature_names: tuple[str, ...] = (
            tuple(ensemble.feature_names) if ensemble.feature_names is not None
            else tuple(f"x{i}" for i in range(ensemble.n_features)))
        self.output_names: tuple[str, ...] = (
            tuple(output_names) if output_names is not None
            else ("raw",) if k == 1 else tuple(f"output_{i}" for i in range(k)))
        self.booster = xgboost.Booster(model_file=bytearray(_exported_json(ensemble)))
        self.device_used = xgboost_device_after_probe(self.booster, device, nthread)
        if self.device_used != device:
            logger.warning("tree_shap device fallback", extra={
                "event": "tree_shap_device_fallback", "requested": device,
                "used": self.device_used})
        probe = xgboost.DMatrix(np.full((1, ensemble.n_features), np.nan, dtype=np.float32))
        probe.set_base_margin(base_margin(ensemble, 1))
        contribs = self._predict(probe, pred_contribs=True).reshape(k, -1)
        self.base_values: npt.NDArray[np.float64] = contribs[:, -1].astype(np.float64)

    @property
    def n_outputs(self) -> int:
        return self.ensemble.n_outputs

    @property
    def n_features(self) -> int:
        return self.ensemble.n_features

    def explain(self, X: npt.ArrayLike, *, interactions: bool = False
                ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """SHAP values of every row of ``X`` in one call (no chunking).

        X : [n, F] numbers (category codes for categorical features, NaN for missing).
        Returns (values, interaction_values): values float32 [n, F] for one output,
        [n, K, F] for K; interaction_values float32 [n, F, F] / [n, K, F, F] when
        ``interactions`` is true, else None. The base column XGBoost appends is dropped
        (it equals :attr:`base_values`).
        """
        chunk = self._explain_chunk(self._validate(X), 0, interactions=interactions)
        return chunk.values, chunk.interaction_values

    def chunk_rows_for(self, *, interactions: bool, memory_limit_bytes: int) -> int:
        """Rows per chunk so that one chunk's output stays under ``memory_limit_bytes``."""
        width = self.n_features + 1
        cells = self.n_outputs * (width * width if interactions else width) + width
        return int(max(1, min(_MAX_CHUNK_ROWS, memory_limit_bytes // (cells * _BYTES_PER_CELL))))

    def iter_chunks(self, X: npt.ArrayLike, *, interactions: bool = False,
                    chunk_rows: int | None = None, memory_limit_bytes: int = 512 << 20,
                    progress: ProgressCallback = no_progress) -> Iterator[ShapChunk]:
        """Explain ``X`` chunk by chunk.

        chunk_rows: rows per chunk (default: from ``memory_limit_bytes``, 512 MiB).
        progress: called with the fraction of rows done before the first chunk and after
        each; it may raise :class:`explainers.progress.Cancelled`, which stops the
        iteration between chunks.
        """
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        if memory_limit_bytes < 1:
            raise ValueError(f"memory_limit_bytes must be >= 1, got {memory_limit_bytes}")
        X = self._validate(X)
        n = X.shape[0]
        step = chunk_rows or self.chunk_rows_for(interactions=interactions,
                                                 memory_limit_bytes=memory_limit_bytes)
        progress(0.0, _STAGE)
        for start in range(0, n, step):
            began = time.perf_counter()
            chunk = self._explain_chunk(X[start:start + step], start, interactions=interactions)
            logger.debug("tree_shap chunk", extra={
                "event": "tree_shap_chunk", "row_start": start, "rows": chunk.n_rows,
                "seconds": time.perf_counter() - began, "device": self.device_used})
            yield chunk
            progress(min(start + step, n) / n, _STAGE)

    def _explain_chunk(self, X: npt.NDArray[np.float32], row_start: int, *,
                       interactions: bool) -> ShapChunk:
        n, k, f = X.shape[0], self.n_outputs, self.n_features
        dmatrix = xgboost.DMatrix(X, missing=np.nan, nthread=self.nthread or -1)
        dmatrix.set_base_margin(base_margin(self.ensemble, n))
        interaction_values = None
        if interactions:
            full = self._predict(dmatrix, pred_interactions=True).reshape(n, k, f + 1, f + 1)
            self._check_bias(full[:, :, -1, -1])
            interaction_values = np.ascontiguousarray(full[:, :, :f, :f])
            # phi_i = sum_j Phi_ij: one TreeSHAP pass instead of two
            values = full[:, :, :f, :].sum(axis=3, dtype=np.float64).astype(np.float32)
        else:
            contribs = self._predict(dmatrix, pred_contribs=True).reshape(n, k, f + 1)
            self._check_bias(contribs[:, :, -1])
            values = np.ascontiguousarray(contribs[:, :, :f])
        margin = self._predict(dmatrix, output_margin=True).reshape(n, k).astype(np.float64)
        if k == 1:
            values = values[:, 0]
            interaction_values = None if interaction_values is None else interaction_values[:, 0]
        return ShapChunk(row_start, values, interaction_values, margin)

    def _predict(self, dmatrix: xgboost.DMatrix, **kind: bool) -> npt.NDArray[np.float32]:
        return np.asarray(self.booster.predict(dmatrix, validate_features=False, **kind))

    def _check_bias(self, bias: npt.NDArray[np.float32]) -> None:
        scale = max(1.0, float(np.abs(self.base_values).max()))
        gap = float(np.abs(bias - self.base_values[None, :]).max()) if bias.size else 0.0
        if gap > 1e-5 * scale:
            raise RuntimeError(f"XGBoost's base column differs from the base values by {gap}; "
                               "the exported booster is inconsistent")

    def _validate(self, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a 2-D array with {self.n_features} columns, "
                             f"got shape {X.shape}")
        if np.isinf(X).any():
            raise ValueError("X contains infinite values (or values beyond the float32 "
                             "range), which XGBoost cannot read; replace them with NaN or "
                             "a finite value")
        return X


class TreeShapSummary:
    """Accumulates the summary of a TreeSHAP run over chunks, without keeping rows.

    ``add(chunk)`` for every chunk, then ``summary()`` (the JSON of shared/API.md).
    """

    def __init__(self, explainer: TreeShap) -> None:
        self.explainer = explainer
        k, f = explainer.n_outputs, explainer.n_features
        self.n_rows = 0
        self._abs_sum = np.zeros((k, f), dtype=np.float64)
        self._abs_interactions: npt.NDArray[np.float64] | None = None
        self.max_additivity_residual = 0.0
        self.prediction_scale = 0.0

    def add(self, chunk: ShapChunk) -> None:
        k, f = self.explainer.n_outputs, self.explainer.n_features
        values = chunk.values.reshape(chunk.n_rows, k, f).astype(np.float64)
        self.n_rows += chunk.n_rows
        self._abs_sum += np.abs(values).sum(axis=0)
        if chunk.interaction_values is not None:
            pairs = _abs_sum_rows(chunk.interaction_values.reshape(chunk.n_rows, k, f, f))
            self._abs_interactions = (pairs if self._abs_interactions is None
                                      else self._abs_interactions + pairs)
        if chunk.n_rows:
            total = values.sum(axis=2) + self.explainer.base_values[None, :]
            residual = float(np.abs(total - chunk.margin).max())
            self.max_additivity_residual = max(self.max_additivity_residual, residual)
            self.prediction_scale = max(self.prediction_scale,
                                        float(np.abs(chunk.margin).max()))

    @property
    def mean_abs_shap(self) -> npt.NDArray[np.float64]:
        """Mean |phi| per output and feature, [K, F]."""
        return self._abs_sum / max(self.n_rows, 1)

    @property
    def mean_abs_interactions(self) -> npt.NDArray[np.float64] | None:
        """Mean |Phi_ij| per output, [K, F, F], or None without interactions."""
        if self._abs_interactions is None:
            return None
        return self._abs_interactions / max(self.n_rows, 1)

    def summary(self) -> dict[str, Any]:
        """The result summary of shared/API.md.

        importance: features sorted by the sum over outputs of mean |phi|, largest first.
        interaction_importance: mean |Phi_ij| in feature_names order, [F][F] for one
        output, [K][F][F] for K; None without interactions. provenance.prediction_scale is
        the largest |margin| seen, the scale of the additivity residual.
        """
        names = self.explainer.feature_names
        mean_abs = self.mean_abs_shap
        order = np.argsort(-mean_abs.sum(axis=0), kind="stable")
        pairs = self.mean_abs_interactions
        interaction_importance = None
        if pairs is not None:
            interaction_importance = (pairs[0] if pairs.shape[0] == 1 else pairs).tolist()
        return {
            "feature_names": list(names),
            "outputs": list(self.explainer.output_names),
            "base_values": [float(b) for b in self.explainer.base_values],
            "n_rows": int(self.n_rows),
            "importance": [{"feature": names[i],
                            "mean_abs_shap": [float(v) for v in mean_abs[:, i]]}
                           for i in order],
            "interaction_importance": interaction_importance,
            "provenance": {
                "engine": "xgboost",
                "xgboost_version": xgboost.__version__,
                "device_used": self.explainer.device_used,
                "rows_explained": int(self.n_rows),
                "max_additivity_residual": float(self.max_additivity_residual),
                "prediction_scale": float(self.prediction_scale),
            },
        }


@dataclass(frozen=True, eq=False)
class TreeShapResult:
    """A whole TreeSHAP run held in memory.

    shap_values: float32 [N, F] / [N, K, F]; row_index: int64 [N];
    interaction_values: float32 [N, F, F] / [N, K, F, F] or None.
    """

    summary_dict: dict[str, Any]
    shap_values: npt.NDArray[np.float32]
    row_index: npt.NDArray[np.int64]
    interaction_values: npt.NDArray[np.float32] | None

    def summary(self) -> dict[str, Any]:
        return self.summary_dict

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        arrays: dict[str, npt.NDArray[Any]] = {"shap_values": self.shap_values,
                                               "row_index": self.row_index}
        if self.interaction_values is not None:
            arrays["interaction_values"] = self.interaction_values
        return arrays


def explain_tree_shap(ensemble: TreeEnsemble, X: npt.ArrayLike, *,
                      row_index: npt.ArrayLike | None = None, interactions: bool = False,
                      device: str = "cpu", nthread: int = 0,
                      output_names: Sequence[str] | None = None,
                      chunk_rows: int | None = None, memory_limit_bytes: int = 512 << 20,
                      progress: ProgressCallback = no_progress) -> TreeShapResult:
    """Explain every row of ``X`` ([N, F]) and keep the per-row arrays in memory.

    row_index: [N] dataset row of each row of X (default 0..N-1). Other parameters as
    :class:`TreeShap` and :meth:`TreeShap.iter_chunks`.
    """
    X = np.asarray(X)
    index = (np.arange(X.shape[0], dtype=np.int64) if row_index is None
             else np.asarray(row_index, dtype=np.int64))
    if index.shape != (X.shape[0],):
        raise ValueError(f"row_index must have shape ({X.shape[0]},), got {index.shape}")
    explainer = TreeShap(ensemble, device=device, nthread=nthread, output_names=output_names)
    accumulator = TreeShapSummary(explainer)
    values: list[npt.NDArray[np.float32]] = []
    pairs: list[npt.NDArray[np.float32]] = []
    for chunk in explainer.iter_chunks(X, interactions=interactions, chunk_rows=chunk_rows,
                                       memory_limit_bytes=memory_limit_bytes,
                                       progress=progress):
        accumulator.add(chunk)
        values.append(chunk.values)
        if chunk.interaction_values is not None:
            pairs.append(chunk.interaction_values)
    k, f = explainer.n_outputs, explainer.n_features
    empty_shape = (0, f) if k == 1 else (0, k, f)
    return TreeShapResult(
        summary_dict=accumulator.summary(),
        shap_values=np.concatenate(values) if values else np.zeros(empty_shape, np.float32),
        row_index=index,
        interaction_values=np.concatenate(pairs) if interactions and pairs else None,
    )


def _abs_sum_rows(a: npt.NDArray[np.float32], block: int = 256) -> npt.NDArray[np.float64]:
    """sum over axis 0 of |a|, in float64, a block of rows at a time: the blocks stay in
    the cache (a float64 copy of a 10k-row interaction chunk was 200 MB and took 0.6-1 s;
    this takes 15 ms)."""
    out = np.zeros(a.shape[1:], dtype=np.float64)
    buffer = np.empty((min(block, a.shape[0]),) + a.shape[1:], dtype=a.dtype)
    for start in range(0, a.shape[0], block):
        part = a[start:start + block]
        out += np.add.reduce(np.abs(part, out=buffer[:part.shape[0]]), axis=0,
                             dtype=np.float64)
    return out


def _exported_json(ensemble: TreeEnsemble) -> bytes:
    text = _exported_models.get(ensemble)
    if text is None:
        text = json.dumps(to_xgboost_json(ensemble)).encode()
        _exported_models[ensemble] = text
    return text


def _check_covers(ensemble: TreeEnsemble) -> None:
    """TreeSHAP divides a child's cover by its parent's: every split needs a positive
    cover, or the values are NaN."""
    for t, tree in enumerate(ensemble.trees):
        inner = tree.left >= 0
        if np.any(~(tree.cover[inner] > 0)):
            node = int(np.flatnonzero(inner & ~(tree.cover > 0))[0])
            raise NotExportable(
                f"tree {t} node {node} has no positive cover (training weight); TreeSHAP "
                "needs the covers of every split, so this model cannot be explained exactly")
