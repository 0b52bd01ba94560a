"""ONNX files as scikit-learn estimators (the reference side of comparisons), and the
check GPU tests skip on. Imports only numpy, onnxruntime, skl2onnx and scikit-learn (and
``models.gpu``, which imports no library of its own), so the GPU tests that use it run on
a machine with just that stack (``--noconftest``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from skl2onnx import to_onnx
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from models.gpu import gpu_visible, onnxruntime_cuda

NO_ONNX_CUDA = "no CUDA GPU with onnxruntime's CUDA provider (onnxruntime-gpu) here"


@functools.cache
def onnx_cuda_available() -> bool:
    """A CUDA GPU here and onnxruntime's CUDA provider (onnxruntime-gpu) offered."""
    return onnxruntime_cuda() and gpu_visible()


class OnnxRegressor(RegressorMixin, BaseEstimator):
    """A fitted estimator that predicts through onnxruntime (scikit-learn's reference)."""

    def __init__(self, session: Any = None) -> None:
        self.session = session

    def fit(self, X: np.ndarray, y: np.ndarray) -> OnnxRegressor:
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        name = self.session.get_inputs()[0].name
        return self.session.run(None, {name: X.astype(np.float32)})[0].reshape(-1)


class OnnxClassifier(ClassifierMixin, BaseEstimator):
    def __init__(self, session: Any = None, classes: Any = None) -> None:
        self.session = session
        self.classes = classes

    def fit(self, X: np.ndarray, y: np.ndarray) -> OnnxClassifier:
        return self

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.classes)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        name = self.session.get_inputs()[0].name
        # float64 like LoadedModel: scikit-learn computes log_loss in float32 when given
        # float32 probabilities (1e-7 off), and in float64, as we do, otherwise.
        probabilities = self.session.run(["probabilities"], {name: X.astype(np.float32)})[0]
        # float32 sigmoids overshoot 1 on some CPUs and GPUs (1.0000001, which scikit-learn's
        # log loss refuses); tabxai clips such rounding, and so does the reference
        return np.clip(probabilities.astype(np.float64), 0.0, 1.0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        name = self.session.get_inputs()[0].name
        return self.session.run(["label"], {name: X.astype(np.float32)})[0]


def onnx_file(estimator: Any, X: np.ndarray, path: Path, **options: Any) -> Any:
    """Convert ``estimator`` to ONNX at ``path``; return an onnxruntime session on it."""
    path.write_bytes(to_onnx(estimator, X[:1].astype(np.float32),
                             options=options).SerializeToString())
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
