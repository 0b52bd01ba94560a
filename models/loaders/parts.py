"""What a loader reads from a model file, before the caller's arguments are checked
against it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.capabilities import Capability
from models.loaded import Predictor

__all__ = ["LoadedParts"]


@dataclass(frozen=True, kw_only=True)
class LoadedParts:
    """A model file's facts as its library states them.

    kind: "tree", "neural" or "other".
    task: "regression", "binary" or "multiclass", as the file says (or as the caller's
        ``task`` settles where the file cannot tell).
    n_features: number of input columns.
    feature_names: column names stored in the file, or None.
    n_outputs: width of the "raw" output (see :class:`models.loaded.LoadedModel`).
    n_classes: number of classes (None for regression).
    classes: class labels stored in the file, in output order, or None.
    categories_by_index: input column index -> category labels in code order.
    details: format-specific facts, JSON-able.
    native: the library object (an InferenceSession for ONNX).
    predictor: the format's :class:`models.loaded.Predictor`.
    capabilities: the optional methods the model has (``models.capabilities``); the
        predictor has what each one calls.
    serial_predict: predict calls should run one at a time (the library spreads one
        call over every core already).
    probability_dtype: the dtype the library computes probabilities in.
    """

    kind: str
    task: str
    n_features: int
    feature_names: list[str] | None
    n_outputs: int
    n_classes: int | None
    details: dict[str, Any]
    native: Any
    predictor: Predictor
    classes: list[Any] | None = None
    categories_by_index: dict[int, list[str]] = field(default_factory=dict)
    capabilities: frozenset[Capability] = frozenset()
    serial_predict: bool = False
    probability_dtype: np.dtype = np.dtype(np.float64)
