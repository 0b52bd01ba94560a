"""Class probabilities from a model's scores, computed as the libraries compute them."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["two_columns", "softmax", "sigmoid"]


def two_columns(p: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """[1 - p, p], with 1 - p computed in p's own dtype as the libraries' classifiers do
    (XGBClassifier in float32, LGBMClassifier in float64)."""
    p = np.asarray(p).reshape(-1)
    return np.column_stack([1.0 - p, p]).astype(np.float64)


def softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))
