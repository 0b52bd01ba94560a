"""LoadedModel: one prediction interface over every model format tabxai reads.

Methods never touch a vendor object: they call :meth:`LoadedModel.predict` with a float64
matrix in the model's column order (categorical columns already encoded as codes, see
``models.features.build_matrix``) and get float64/int64 arrays back. Each format's
predictor calls the library the way its own ``predict`` does, so the numbers are the
library's numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from models.errors import UnsupportedOutput
from models.trees import TreeEnsemble

__all__ = ["LoadedModel", "Output", "Device", "DEFAULT_BATCH_BYTES"]

logger = logging.getLogger(__name__)

Output = Literal["raw", "probability", "label"]
Device = Literal["cpu", "cuda"]

DEFAULT_BATCH_BYTES = 256 * 2**20
"""Bound on one batch's input plus output, in bytes, when ``batch_rows`` is not given."""


class Predictor(Protocol):
    """What each format supplies; X is float64 [n, n_features], C-contiguous (or the
    predictor's ``input_dtype`` where it declares one and the caller gave rows in it)."""

    def raw(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...

    def probability(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...

    def label(self, X: npt.NDArray[np.float64]) -> npt.NDArray[Any]: ...

    def use_device(self, device: Device) -> str: ...


class LoadedModel:
    """A model ready to predict, whatever library it came from.

    Attributes
    ----------
    format: one of ``models.formats.FORMATS``.
    kind: "tree", "neural" or "other".
    task: "regression", "binary" or "multiclass".
    n_features: number of input columns.
    feature_names: the model's column names, or None when it has none.
    n_outputs: width of the "raw" output: 1 for regression and binary boosting, K for
        multiclass boosting, the number of classes for scikit-learn classifiers that give
        probabilities (forests, trees, MLPs) and ONNX classifiers.
    classes: class labels in output order (None for regression).
    categories: feature name (or str(column index)) -> category labels in code order.
    details: format-specific facts (library_version, objective, ...), JSON-able.
    native: the library object (an InferenceSession for ONNX).
    device_used: "cpu" or "cuda": where the last prediction ran.
    """

    def __init__(
        self,
        *,
        format: str,
        kind: str,
        task: str,
        n_features: int,
        feature_names: list[str] | None,
        n_outputs: int,
        classes: list[Any] | None,
        categories: dict[str, list[str]],
        details: dict[str, Any],
        native: Any,
        predictor: Predictor,
    ) -> None:
        self.format = format
        self.kind = kind
        self.task = task
        self.n_features = n_features
        self.feature_names = feature_names
        self.n_outputs = n_outputs
        self.classes = classes
        self.categories = categories
        self.details = details
        self.native = native
        self.device_used: str = "cpu"
        self._predictor = predictor
        self._ensemble: TreeEnsemble | None = None

    @property
    def input_dtype(self) -> np.dtype:
        """The dtype the model computes in (float32 for most ONNX graphs, else float64):
        :meth:`predict` takes rows in it as they are, and converts any other to float64."""
        return np.dtype(getattr(self._predictor, "input_dtype", np.float64))

    @property
    def n_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def predict(
        self,
        X: npt.ArrayLike,
        *,
        output: Output = "raw",
        device: Device = "cpu",
        batch_rows: int | None = None,
    ) -> npt.NDArray[Any]:
        """Predict for the rows of X.

        X: float64 [n, n_features], model column order, categorical codes (or
            ``input_dtype``, which saves a conversion).
        output: "raw" -> float64 [n, n_outputs] (margin for boosting; predict_proba for
            scikit-learn forests and trees; decision_function for scikit-learn gradient
            boosting classifiers; predict for regressors);
            "probability" -> float64 [n, n_classes] (classifiers only; binary gives two
            columns); "label" -> int64 [n] class index for classifiers, float64 [n]
            prediction for regressors.
        device: "cuda" runs on the GPU where the library and a GPU allow it, else falls
            back to the CPU; ``device_used`` records which.
        batch_rows: rows per library call; default keeps one batch's input and output
            within DEFAULT_BATCH_BYTES. Results do not depend on it for tree models.
        """
        if output not in ("raw", "probability", "label"):
            raise ValueError(f"output must be 'raw', 'probability' or 'label', got {output!r}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if batch_rows is not None and batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
        X = np.asarray(X)
        X = np.ascontiguousarray(X, dtype=X.dtype if X.dtype == self.input_dtype
                                 else np.float64)
        self._check(X, output)
        self.device_used = self._predictor.use_device(device)
        compute = {
            "raw": self._predictor.raw,
            "probability": self._predictor.probability,
            "label": self._predictor.label,
        }[output]
        width = {"raw": self.n_outputs, "probability": self.n_classes or 1, "label": 1}[output]
        if batch_rows is None:
            batch_rows = max(1, DEFAULT_BATCH_BYTES // (8 * (self.n_features + max(width, 2))))
        n = X.shape[0]
        if n <= batch_rows:
            return self._finish(compute(X), output)
        parts = [compute(X[start : start + batch_rows]) for start in range(0, n, batch_rows)]
        return self._finish(np.concatenate(parts, axis=0), output)

    def predict_from_margin(self, margin: npt.ArrayLike, *,
                            output: Output = "raw") -> npt.NDArray[Any]:
        """What :meth:`predict` returns for rows whose raw margin is ``margin``.

        For XGBoost gbtree models only: ``margin`` is float32 [n, n_outputs] summed the
        way XGBoost sums it (see ``explainers.permutation``); the objective's transform
        is XGBoost's own, so the result equals ``predict`` on those rows bit for bit.
        Raises UnsupportedOutput for other models.
        """
        from_margin = getattr(self._predictor, "from_margin", None)
        if from_margin is None:
            raise UnsupportedOutput(
                f"A {self.format} model gives no predictions from margins; call predict.")
        if output == "probability" and self.task == "regression":
            raise UnsupportedOutput(
                "A regression model gives no probabilities; ask for output='raw' or 'label'."
            )
        return self._finish(from_margin(margin, output), output)

    def permuted_predictor(
        self,
        X: npt.ArrayLike,
        base: npt.NDArray[np.intp],
        permutations: list[npt.NDArray[np.intp]],
        *,
        output: Output = "raw",
        device: Device = "cpu",
        rows_per_call: int,
    ) -> Callable[[Sequence[int]], list[npt.NDArray[Any]]] | None:
        """Predictions on permuted copies of X's rows, built where the model runs.

        Returns ``predict(cols)``: for each permutation ``p``, what :meth:`predict` gives
        for the rows ``X[base]`` with the columns ``cols`` taken from the rows ``X[p]``
        (scikit-learn's shuffled columns: ``p = base[order]``). X and the indices go to the
        device once; each call sends only which columns move (``models.onnx_permuted``).
        None where the model cannot do this (not ONNX, a fixed batch size): predict then.
        ``rows_per_call`` bounds the rows the model gets per library call.
        """
        permuted_runs = getattr(self._predictor, "permuted_runs", None)
        if permuted_runs is None:
            return None
        X = np.asarray(X)
        self._check(X, output)
        self.device_used = self._predictor.use_device(device)
        runs = permuted_runs(X, base, permutations, device, rows_per_call)
        if runs is None:
            return None
        from_output = self._predictor.from_output  # type: ignore[attr-defined]

        def predict(cols: Sequence[int]) -> list[npt.NDArray[Any]]:
            return [self._finish(from_output(out, output), output) for out in runs.run(cols)]

        return predict

    def _check(self, X: np.ndarray, output: Output) -> None:
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must have shape [n, {self.n_features}], got {list(X.shape)}")
        if output == "probability" and self.task == "regression":
            raise UnsupportedOutput(
                "A regression model gives no probabilities; ask for output='raw' or 'label'."
            )

    def _finish(self, values: npt.NDArray[Any], output: Output) -> npt.NDArray[Any]:
        if output == "label":
            dtype = np.float64 if self.task == "regression" else np.int64
            values = np.asarray(values, dtype=dtype)
            return values.reshape(-1) if values.ndim == 1 or values.shape[1] == 1 else values
        values = np.asarray(values, dtype=np.float64)
        return values.reshape(values.shape[0], -1)

    def tree_ensemble(self) -> TreeEnsemble:
        """The model as a normalized tree ensemble (read once, then cached).

        Raises models.readers.NotATreeModel for models that are not tree ensembles.
        """
        from models.readers import NotATreeModel, read_ensemble

        if self._ensemble is None:
            if self.format not in ("xgboost", "lightgbm", "sklearn", "pickle", "joblib"):
                raise NotATreeModel(
                    f"A {self.format} model is not a tree ensemble tabxai can read."
                )
            self._ensemble = read_ensemble(self.native)
        return self._ensemble

    def __repr__(self) -> str:
        return (
            f"LoadedModel(format={self.format!r}, kind={self.kind!r}, task={self.task!r}, "
            f"n_features={self.n_features}, n_outputs={self.n_outputs})"
        )
